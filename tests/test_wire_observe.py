"""fleet.state.observe with per-server wire evidence and line-level sources, and the inventory's evidence fields."""
from __future__ import annotations

from pathlib import Path

import pytest

from fleet.config.inventory import Inventory, load
from fleet.state.observe import REGISTERED, UNREGISTERED, Observation, PhoneState, apply
from soundpoint.yamlfile import FileError

MAC = "0004f2000001"


def wire(server, state, t, code=None, expires=None, source="wire"):
    return Observation(mac=MAC, t=t, source=source, server=server, state=state, code=code, expires=expires)


def line(state, t, source="event"):
    return Observation(mac=MAC, t=t, source=source, server=None, state=state)


def test_code_expiry_and_evidence_age_are_kept_per_server():
    st = PhoneState(mac=MAC)
    apply(st, wire(1, REGISTERED, 10.0, 200, 300))
    apply(st, wire(2, UNREGISTERED, 11.0, 403, source="hep"))
    assert st.servers[1] | {} == {"state": REGISTERED, "t": 10.0, "source": "wire", "address": "", "code": 200,
                                   "until": 310.0}
    assert st.servers[2]["code"] == 403 and "until" not in st.servers[2]
    assert st.evidence == {"wire": 10.0, "hep": 11.0} and st.working_server == 1
    back = PhoneState.from_dict(st.to_dict())
    assert back.servers == st.servers and back.evidence == st.evidence


def test_line_event_plus_per_server_gaps_names_the_only_possible_server():
    """Wire sees the primary time out; the gateway is never seen; the phone's notification says the line is
    up: the gateway is the working server (inferred), until per-server evidence says otherwise."""
    st = PhoneState(mac=MAC)
    apply(st, wire(1, UNREGISTERED, 5.0), configured=[1, 2])
    assert st.working_server is None
    assert apply(st, line(REGISTERED, 6.0), configured=[1, 2]) and (st.working_server, st.inferred) == (2, True)
    apply(st, wire(1, REGISTERED, 7.0, 200, 60), configured=[1, 2])
    assert (st.working_server, st.inferred) == (1, False)


def test_no_inference_from_a_line_state_older_than_the_per_server_evidence():
    st = PhoneState(mac=MAC)
    apply(st, line(REGISTERED, 1.0), configured=[1, 2])
    apply(st, wire(2, REGISTERED, 2.0, 200, 60, source="gateway"), configured=[1, 2])
    assert st.working_server is None, "the gateway's word says nothing of server 1, which would be working if up"
    apply(st, wire(2, UNREGISTERED, 3.0, source="gateway"), configured=[1, 2])
    assert st.working_server is None, "the line may have gone down with server 2: no guess"
    apply(st, line(REGISTERED, 1.5), configured=[1, 2])
    assert st.working_server is None


def test_two_unknown_servers_and_a_line_event_stay_unknown():
    st = PhoneState(mac=MAC)
    apply(st, line(REGISTERED, 1.0), configured=[1, 2])
    assert st.working_server is None and st.line_state == REGISTERED


# ---------------------------------------------------------------- inventory: capture and gateway

BASE = """name: x
secrets_file: s.yml
sites:
  - name: a
    boot_server: {url: "file:///x"}
    router: {driver: ROUTER, address: 10.0.0.1, credentials: r, wan_interface: wan0}
"""


def _load(tmp_path: Path, extra: str, router: str = "linux_ssh") -> Inventory:
    (tmp_path / "inv.yml").write_text(BASE.replace("ROUTER", router) + extra)
    return load(tmp_path / "inv.yml")


def test_capture_and_gateway_forms(tmp_path):
    site = _load(tmp_path, "    gateway: {address: 10.0.0.1, platform: kamailio, interval: 5}\n"
                           "    capture: [router lan0, interface eth1, hep 10.0.0.9:9060]\n").sites[0]
    assert site.gateway == "10.0.0.1" and site.gateway_registrar.platform == "kamailio"
    assert [(c.kind, c.interface, c.listen) for c in site.capture] == [
        ("router", "lan0", None), ("interface", "eth1", None), ("hep", None, "10.0.0.9:9060")]
    site = _load(tmp_path, "    gateway: 10.0.0.1\n    capture: router\n").sites[0]
    assert site.gateway_registrar is None and site.capture[0].interface is None
    site = _load(tmp_path, "    gateway: 10.0.0.1\n    capture: {kind: hep, listen: '10.0.0.9:9060', "
                           "senders: [10.0.0.1]}\n").sites[0]
    assert site.capture[0].senders == ["10.0.0.1"]


@pytest.mark.parametrize("extra, router, line, message", [
    ("    gateway: 10.0.0.1\n    capture: tap eth0\n", "linux_ssh", 8, "is not one of: router"),
    ("    gateway: 10.0.0.1\n    capture: interface\n", "linux_ssh", 8, "expected router"),
    ("    gateway: 10.0.0.1\n    capture: hep 0.0.0.0:9060\n", "linux_ssh", 8, "not a wildcard"),
    ("    gateway: 10.0.0.1\n    capture: hep 10.0.0.9\n", "linux_ssh", 8, "host:port"),
    ("    gateway: 10.0.0.1\n    capture: router\n", "snmp", 8, "router with driver linux_ssh"),
    ("    gateway: {address: 10.0.0.1, platform: opensips}\n", "linux_ssh", 7, "not one of kamailio"),
    ("    gateway: {platform: kamailio}\n", "linux_ssh", 7, "address is required"),
    ("    gateway: {address: 10.0.0.1, platfrom: kamailio}\n", "linux_ssh", 7, "unknown field"),
    ("    gateway: {address: 10.0.0.1, platform: kamailio}\n", "snmp", 7, "polled over the router's SSH"),
])
def test_bad_capture_or_gateway_names_file_line_and_field(tmp_path, extra, router, line, message):
    with pytest.raises(FileError) as err:
        _load(tmp_path, extra, router)
    text = str(err.value)
    assert f"inv.yml:{line}" in text and message in text, text


# ---------------------------------------------------------------- fleet status: state at each server, evidence age

def test_status_row_and_table_show_each_server_with_source_and_age():
    import time

    from rich.console import Console

    from fleet.evidence.status import row_for_json, table

    st = PhoneState(mac=MAC)
    now = time.time()
    apply(st, wire(1, UNREGISTERED, now - 3, 403))
    apply(st, wire(2, REGISTERED, now - 20, 200, 60, source="gateway"))
    apply(st, line(REGISTERED, now - 100))
    p = {"mac": MAC, "site": "hq", "model": "VVX 410", "state": st.to_dict(),
         "configured_servers": [{"index": 1, "address": "prov", "register": True},
                                {"index": 2, "address": "10.0.0.1", "register": True}]}
    row = row_for_json(p)
    assert [(s["index"], s["state"], s["source"], s["code"]) for s in row["servers"]] == [
        (1, UNREGISTERED, "wire", 403), (2, REGISTERED, "gateway", 200)]
    assert row["servers"][1]["expires_at"] == pytest.approx(now + 40, abs=0.01) and row["working_server"] == 2
    assert set(row["evidence"]) == {"wire", "gateway", "event"}
    console = Console(width=200, record=True)
    console.print(table([p]))
    text = console.export_text()
    assert "1:down(403) wire 3s" in text and "2:up gateway 20s" in text and "wire 3s" in text, text
    assert "reg 2" not in text
    # a second line is shown under the first, with its own servers; line 1's working server is unchanged
    apply(st, Observation(mac=MAC, t=now - 5, source="hep", reg=2, server=1, state=REGISTERED, code=200, expires=60))
    console = Console(width=200, record=True)
    console.print(table([dict(p, state=st.to_dict())]))
    text = console.export_text()
    assert "reg 2: 1:up hep 5s" in text and "1:down(403) wire 3s" in text, text


# ---------------------------------------------------------------- a capture source fed junk

def _pump(chunks: list[bytes]):
    """Run the capture sources' read loop (CaptureThread.pump) over `chunks`; (observations, error)."""
    from fleet.evidence.sources.base import Sink
    from fleet.evidence.sources.local_capture import LocalCapture
    from fleet.evidence.sources.targets import Targets
    from fleet.config.inventory import Capture
    from fleet.evidence.wire.pcap import PcapFormatError

    params = {"reg.1.address": "1001", "reg.1.server.1.address": "10.0.0.5"}
    site = Inventory.model_validate({"name": "x", "sites": [{"name": "a", "gateway": "10.0.0.1",
                                                             "boot_server": {"url": "file:///x"},
                                                             "phones": [{"mac": MAC, "model": "VVX 410",
                                                                         "address": "10.0.0.20", "credentials": "c",
                                                                         "params": params}]}]}).sites[0]
    got: list = []
    sink = Sink(got.extend, lambda source, dgs: None)
    src = LocalCapture(site, sink, Capture(kind="interface", interface="eth0"), Targets(site, lambda: {MAC: params}))
    feed = iter(chunks)
    assert src._pipeline().build.attribution.targets, "a phone is a target: junk must still give nothing"
    try:
        src.pump(lambda timeout: next(feed, None))
    except PcapFormatError as exc:
        return got, exc
    return got, None


def test_junk_on_the_capture_stream_ends_the_run_with_a_format_error_and_no_observation():
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from fleet.evidence.wire.pcap import PcapWriter

    import io
    head = io.BytesIO()
    PcapWriter(head, 1)

    @settings(max_examples=150, deadline=None)
    @given(st.lists(st.binary(max_size=400), max_size=6), st.booleans())
    def run(chunks, with_header):
        got, _ = _pump(([head.getvalue()] if with_header else []) + chunks)
        assert got == []

    run()
    got, err = _pump([b"GET / HTTP/1.1\r\n\r\n" * 3])
    assert got == [] and "not a pcap stream" in str(err)
    got, err = _pump([head.getvalue(), b"\x00" * 10])
    assert got == [] and "ended inside a record" in str(err)


def test_server_2_is_working_only_once_server_1_is_known_down():
    st = PhoneState(mac=MAC)
    apply(st, wire(2, REGISTERED, 1.0, 200, 60, source="hep"), configured=[1, 2])
    assert st.working_server is None
    assert apply(st, wire(1, UNREGISTERED, 2.0, 408, source="wire"), configured=[1, 2]) and st.working_server == 2
    assert apply(st, wire(1, REGISTERED, 3.0, 200, 60, source="wire"), configured=[1, 2]) and st.working_server == 1
    # a server the phone does not register with (register=0) is not waited for
    st2 = PhoneState(mac=MAC)
    apply(st2, wire(2, REGISTERED, 1.0, 200, 60, source="gateway"), configured=[2])
    assert st2.working_server == 2
