"""End to end without our invented syslog line: a WAN outage experiment observed from SIP on the wire and the
phones' telephone notifications only.

The lab (net 15, one site) has the phones' syslog lines (registration and call) switched off, as on a SIP 3.x
site. The lab's inventory names `capture: router lan0`: the collector in a real `fleet worker` runs fleet's capture command
over the router's SSH and decodes the pcap stream. Each phone's failover and recovery times must agree with
the lab's ground truth within the sampling interval, the report must name the wire as the source of every
transition, the call step must learn from the wire (the answered INVITE) that the call went to the gateway,
and capture.pcap must hold the SIP the run used. A rollout on the same lab verifies `registered_to: [1, 2]`
after each reboot from the same evidence.

Where Kamailio is installed the site's gateway is Kamailio, as on many real sites: its siptrace sends HEP to
the collector (`capture: hep ...`) and its registrar is polled with `kamcmd ul.dump` over the router's SSH
(`gateway: {platform: kamailio}`); both then speak for server 2, the capture for server 1.

A second site (net 9) has HEP as its only per-server source, from a Kamailio gateway that is also the phones'
outbound proxy for the provider: every REGISTER passes Kamailio, and the same experiment passes from HEP alone.

The DNS TTL is long (300 s) as on most sites: with the lab's 1 s the phones would re-resolve the provider's
name at each refresh, the query would fail first (the WAN is down), and the phone would give up on the
provider without sending a REGISTER, which a SIP capture cannot see.
"""
from __future__ import annotations

import json

import dpkt
import pytest
import yaml

from conftest import agrees_with_truth, free_port, lab_spec, run_fleet, wait_until, write_rollout_playbook
from fleet.evidence.sources import gateway_bindings as gb
from fleet.state.observe import REGISTERED
from fleet.state.store import Store
from hil import kamailio

KAMAILIO_MISSING = kamailio.unavailable(siptrace=True)

pytestmark = pytest.mark.slow
SAMPLE = 0.25


def outage_playbook(name: str, site: str, baseline: int, cut_for: int, fallback: int, recovery: int) -> str:
    """The WAN-outage experiment both labs of this module run, with their own time limits."""
    return f"""kind: experiment
name: {name}
site: {site}
sample_interval: 0.25
steps:
  - {{name: baseline on the provider, expect: working_server, server: 1, within: {baseline}}}
  - {{name: cut the WAN, outage: link-down, max_duration: {cut_for}}}
  - {{name: phones fall back to the gateway, expect: working_server, server: 2, within: {fallback}, measure: failover}}
  - {{name: a call during the outage reaches the gateway, call: "2000", expect_server: 2, within: 10}}
  - {{name: bring the WAN back, restore: true}}
  - {{name: phones return to the provider, expect: working_server, server: 1, within: {recovery}, measure: recovery}}
"""


PLAYBOOK = outage_playbook("wire-only-fallback", "hq", 30, 120, 30, 20)


def run_passing_experiment(playbook_text: str, lab, redis_url: str, tmp_path) -> dict:
    """`fleet experiment run --json` on the lab; the report, once the run exited 0 and says it passed."""
    playbook = tmp_path / "playbook.yml"
    playbook.write_text(playbook_text)
    res = run_fleet(["experiment", "run", str(playbook), "--inventory", str(lab.inventory),
                     "--report-dir", str(tmp_path / "reports"), "--json"], redis_url)
    assert "Traceback" not in res.stderr, res.stderr
    assert res.returncode == 0, res.stderr + res.stdout[-3000:]
    doc = json.loads(res.stdout)
    assert doc["passed"] is True, doc["steps"]
    return doc


@pytest.fixture(scope="module")
def lab(lab_factory, worker_factory):
    spec = lab_spec("wireonly", phones=4)
    spec["syslog_registration_line"] = False
    spec["timing"]["dns_ttl"] = 300
    hep = f"127.0.0.1:{free_port()}"
    if not KAMAILIO_MISSING:
        spec["sites"][0]["gateway"] = "kamailio"
        spec["sites"][0]["collector"]["hep"] = hep
    lab = lab_factory(spec)
    # the lab's inventory names the sources a site of this shape has: the router's capture (no syslog line),
    # and with a Kamailio gateway its HEP and its bindings
    site = yaml.safe_load(lab.inventory.read_text())["sites"][0]
    if KAMAILIO_MISSING:
        assert site["capture"] == ["router lan0"] and not isinstance(site["gateway"], dict), site
    else:
        assert site["capture"] == ["router lan0", f"hep {hep}"], site
        assert site["gateway"] == {"address": site["router"]["address"], "platform": "kamailio"}, site
    worker_factory(lab.inventory)
    return lab


def _truth_change_time(status: dict, mac: str, server: int, after: float) -> float | None:
    for e in status["ground_truth"]["phones"][mac]["events"]:
        if e["kind"] == "working_server" and e["data"]["server"] == server and e["t"] >= after:
            return e["t"]
    return None


def test_outage_observed_from_the_wire_and_notifications_agrees_with_ground_truth(lab, redis_url, tmp_path):
    doc = run_passing_experiment(PLAYBOOK, lab, redis_url, tmp_path)
    assert len(doc["phones"]) == 4

    call = next(s for s in doc["steps"] if s["name"].startswith("a call"))
    assert call["passed"] and "server 2" in call["message"], call
    # the lab's phones log no call line either: the answered INVITE on the wire is the only evidence
    wire_source = "wire" if KAMAILIO_MISSING else "hep"    # Kamailio's INVITEs bypass the router: HEP shows them
    seen_by = call["message"].split("seen by ", 1)[1]
    assert wire_source in seen_by and "syslog" not in seen_by, call
    truth = lab.status()
    outage = doc["outages"][0]
    for p in doc["phones"]:
        sources = {e["source"] for e in p["timeline"] if e.get("kind") == "registration"} - {"state at start"}
        allowed = {"wire", "event"} | (set() if KAMAILIO_MISSING else {"hep", "gateway"})
        assert "syslog" not in sources and "wire" in sources and sources <= allowed, (p["mac"], sources)
        t_fail = _truth_change_time(truth, p["mac"], 2, outage["start"])
        # from the restore's request: a phone back between it and the router's answer measures 0 s (caused_change)
        asked_end = outage.get("asked_end") or outage["end"]
        t_back = _truth_change_time(truth, p["mac"], 1, min(outage["end"], asked_end) - SAMPLE)
        assert t_fail is not None and t_back is not None, (p["mac"], outage)
        assert abs(outage["start"] + p["failover_s"] - t_fail) <= SAMPLE, (p["mac"], p["failover_s"], t_fail - outage["start"])
        assert agrees_with_truth(p["recovery_s"], outage["end"], outage.get("asked_end"), t_back, SAMPLE), \
            (p["mac"], p["recovery_s"], t_back - outage["end"], outage)
        moves = [(t["from"], t["to"]) for t in p["transitions"]]
        assert (1, 2) in moves and (2, 1) in moves, p["transitions"]
        assert all("wire" in t["sources"] for t in p["transitions"] if (t["from"], t["to"]) in ((1, 2), (2, 1)))

    report_dir = next((tmp_path / "reports").iterdir())
    assert doc["capture"]["file"] == "capture.pcap" and doc["capture"]["written"] > 0
    with open(report_dir / "capture.pcap", "rb") as f:
        payloads = [bytes(dpkt.ip.IP(buf).data.data) for _, buf in dpkt.pcap.Reader(f)]
    assert sum(p.startswith(b"REGISTER ") for p in payloads) >= 4 and any(p.startswith(b"SIP/2.0 200") for p in payloads)
    page = (report_dir / "report.html").read_text()
    assert 'class="register" data-server="1" data-source="wire"' in page
    assert f'class="register" data-server="2" data-source="{"wire" if KAMAILIO_MISSING else "hep"}"' in page


@pytest.mark.skipif(KAMAILIO_MISSING is not None, reason=str(KAMAILIO_MISSING))
def test_kamailio_gateway_hep_and_bindings_agree_with_its_own_dump(lab, redis_url):
    """Server 2 as the collector stores it (from Kamailio's HEP and from its bindings polled over SSH) is what
    `kamcmd ul.dump` says and what the lab's phones think, for every phone."""
    store = Store(redis_url)
    inv = yaml.safe_load(lab.inventory.read_text())
    phones = {p["mac"]: p["params"]["reg.1.address"] for p in inv["sites"][0]["phones"]}

    def both_sources_say_registered():
        states = {mac: store.phone_state(mac) for mac in phones}
        ok = all(st.servers.get(2, {}).get("state") == REGISTERED and {"hep", "gateway"} <= set(st.evidence)
                 for st in states.values())
        return states if ok else None

    states = wait_until(both_sources_say_registered, 30, "server 2 registered by HEP and bindings for every phone")
    ctl = lab.state / "kamailio-hq" / "ctl.sock"
    dump = kamailio.ul_dump(ctl)
    bound = {b.user for b in gb.parse_kamailio(dump) if b.active}
    assert set(phones.values()) <= bound, (bound, dump[-1500:])
    truth = lab.status()["ground_truth"]["phones"]
    for mac in phones:
        assert truth[mac]["current"].get("working_server", {}).get("1") == 1, truth[mac]["current"]
        assert states[mac].working_server == 1, states[mac].to_dict()


def test_rollout_verifies_registered_to_both_servers_without_syslog(lab, redis_url, tmp_path):
    """`verify: registered_to: [1, 2]` after each reboot, with the registration syslog line off: the wire's
    REGISTER answers (and Kamailio's HEP and bindings, where it runs) are the evidence."""
    import time

    pb = write_rollout_playbook(tmp_path / "expiry.yml", "wire-expiry", canary=1, deadline=120, within=25)
    t0 = time.time()
    res = run_fleet(["rollout", "run", str(pb), "--inventory", str(lab.inventory), "--json"], redis_url, timeout=240)
    assert res.returncode == 0, res.stderr[-3000:] + res.stdout[-2000:]
    out = json.loads(res.stdout)
    assert out["status"] == "done" and out["counts"] == {"total": 4, "verified": 4}, out
    truth = lab.status()["ground_truth"]["phones"]
    store = Store(redis_url)
    for mac in truth:
        assert any(e["kind"] == "reboot" and e["t"] >= t0 for e in truth[mac]["events"]), mac
        state = store.phone_state(mac)
        assert state.servers[1]["source"] == "wire" and state.servers[1]["t"] >= t0, state.to_dict()
        assert "syslog" not in state.evidence, state.evidence


# ------------------------------------------------------------------------------ Kamailio's HEP as the only source

UNIT_NET = 96      # the unit tests' lab files only (no lab starts on it)
HEP_PLAYBOOK = outage_playbook("hep-only-fallback", "branch", 8, 60, 20, 5)


@pytest.fixture(scope="module")
def hep_lab(lab_factory, worker_factory):
    """A second site (its own lab and net): no syslog lines, no router capture, no bindings polling; the Kamailio
    gateway's siptrace HEP is the only per-server source (`collector.evidence: [hep]`). The gateway is also the
    phones' outbound proxy for the provider (`outbound_proxy: gateway`), so every REGISTER, to either server,
    passes it."""
    if KAMAILIO_MISSING:
        pytest.skip(str(KAMAILIO_MISSING))
    spec = lab_spec("heponly", phones=3, site="branch")
    spec["syslog_registration_line"] = False
    spec["timing"]["dns_ttl"] = 300
    hep = f"127.0.0.1:{free_port()}"
    site = spec["sites"][0]
    site.update(gateway="kamailio", outbound_proxy="gateway")
    site["collector"].update(hep=hep, evidence=["hep"], hep_auth_key=True)     # siptrace signs its HEP (issue 17)
    lab = lab_factory(spec)
    inv_site = yaml.safe_load(lab.inventory.read_text())["sites"][0]
    assert inv_site["capture"] == [{"kind": "hep", "listen": hep, "auth_keys": {inv_site["gateway"]: "hep_branch"}}] \
        and not isinstance(inv_site["gateway"], dict), inv_site
    # the phones' files name the gateway as the line's outbound proxy, and not for the gateway's own server
    gateway = inv_site["router"]["address"]
    assert {k: v for k, v in inv_site["params"].items() if "utboundProxy" in k} == {
        "reg.1.outboundProxy.address": gateway, "reg.1.outboundProxy.port": "5060",
        "reg.1.server.2.useOutboundProxy": "0"}, inv_site["params"]
    worker_factory(lab.inventory, site="branch")
    return lab


def test_kamailio_hep_alone_sees_both_servers_through_the_outbound_proxy(hep_lab, redis_url, tmp_path):
    """HEP from the gateway, which is also the phones' outbound proxy for the provider, is the only per-server
    source: every REGISTER to either server passes Kamailio, and fleet tells the two apart by the Request-URI's
    host. The experiment passes, every phone's failover and recovery agree with the lab's ground truth within the
    sampling interval, and HEP names both transitions; the relayed leg (Kamailio to the provider) is nobody's."""
    doc = run_passing_experiment(HEP_PLAYBOOK, hep_lab, redis_url, tmp_path)
    assert len(doc["phones"]) == 3, doc["steps"]
    call = next(s for s in doc["steps"] if s["name"].startswith("a call"))
    assert "server 2" in call["message"] and call["message"].split("seen by ", 1)[1].startswith("hep)"), call
    truth = hep_lab.status()
    outage = doc["outages"][0]
    for p in doc["phones"]:
        regs = [e for e in p["timeline"] if e.get("kind") == "registration" and e["source"] != "state at start"]
        assert {e["source"] for e in regs} <= {"hep", "event"}, (p["mac"], regs)
        assert {e.get("server") for e in regs if e["source"] == "hep"} == {1, 2}, (p["mac"], regs)   # the provider too
        t_fail = _truth_change_time(truth, p["mac"], 2, outage["start"])
        # from the restore's request: a phone back between it and the router's answer measures 0 s (caused_change)
        asked_end = outage.get("asked_end") or outage["end"]
        t_back = _truth_change_time(truth, p["mac"], 1, min(outage["end"], asked_end) - SAMPLE)
        assert t_fail is not None and t_back is not None, (p["mac"], outage)
        assert abs(outage["start"] + p["failover_s"] - t_fail) <= SAMPLE, (p["mac"], p["failover_s"], t_fail - outage["start"])
        assert agrees_with_truth(p["recovery_s"], outage["end"], outage.get("asked_end"), t_back, SAMPLE), \
            (p["mac"], p["recovery_s"], t_back - outage["end"], outage)
        moves = {(t["from"], t["to"]): t for t in p["transitions"]}
        assert (1, 2) in moves and (2, 1) in moves, p["transitions"]
        assert all("hep" in moves[m]["sources"] for m in ((1, 2), (2, 1))), p["transitions"]
    assert doc["capture"]["sources"] == {"hep": doc["capture"]["datagrams"]} and doc["capture"]["written"] > 0


def test_lab_inventory_names_the_evidence_a_site_of_its_shape_has(tmp_path):
    """Unit: the sources the lab's inventory names per site, by default and as a lab file picks them."""
    from soundpoint.yamlfile import FileError
    from hil import labfile
    from hil.inventory_export import evidence_inventory

    def load(syslog: bool = True, **site) -> labfile.LabFile:
        spec = lab_spec("ev", net=UNIT_NET, phones=1)
        spec["syslog_registration_line"] = syslog
        collector = dict(spec["sites"][0]["collector"], **site.pop("collector", {}))
        spec["sites"][0].update(site, collector=collector)
        path = tmp_path / "lab.yml"
        path.write_text(yaml.safe_dump(spec))
        return labfile.load(path)

    def sources(lab: labfile.LabFile) -> dict:
        return evidence_inventory(lab, lab.sites[0], f"127.{UNIT_NET}.0.1")

    kam = {"address": f"127.{UNIT_NET}.0.1", "platform": "kamailio"}
    assert sources(load()) == {}                                       # the syslog line is the per-server source
    assert sources(load(syslog=False)) == {"capture": ["router lan0"]}
    assert sources(load(gateway="kamailio")) == {"gateway": kam}
    assert sources(load(syslog=False, gateway="kamailio", collector={"hep": "127.0.0.1:9999"})) == {
        "capture": ["router lan0", "hep 127.0.0.1:9999"], "gateway": kam}
    assert sources(load(syslog=False, gateway="kamailio", collector={"hep": "127.0.0.1:9999", "evidence": ["hep"]})) == {
        "capture": ["hep 127.0.0.1:9999"]}
    assert sources(load(syslog=False, collector={"evidence": []})) == {}
    assert sources(load(syslog=False, gateway="kamailio", collector={"hep": "127.0.0.1:9999", "evidence": ["hep"],
                                                                     "hep_auth_key": True})) == {
        "capture": [{"kind": "hep", "listen": "127.0.0.1:9999", "auth_keys": {f"127.{UNIT_NET}.0.1": "hep_hq"}}]}
    for site, words in (({"collector": {"evidence": ["hep"]}}, "evidence hep needs"),
                        ({"collector": {"evidence": ["gateway"]}}, "evidence gateway needs `gateway: kamailio`"),
                        ({"collector": {"evidence": ["mirror"]}}, "evidence"),
                        ({"collector": {"hep_auth_key": True}}, "hep_auth_key needs the HEP address")):
        with pytest.raises(FileError, match=words):
            load(**site)


def test_outbound_proxy_option_is_validated_and_written_as_each_family_has_it(tmp_path):
    """Unit: `outbound_proxy: gateway` needs the Kamailio gateway and servers it can relay for (errors name the lab
    file and the field); the phones' files get the line's proxy where every family at the site has it, else the
    phone-wide one, and useOutboundProxy=0 for the gateway's server where the family has that switch."""
    from soundpoint.yamlfile import FileError
    from hil import labfile
    from hil.lab import Lab

    def load(family: str = "uc-5.x", **site) -> labfile.LabFile:
        spec = lab_spec("proxy", net=UNIT_NET, phones=1)
        spec["firmware_family"] = family
        spec["sites"][0].update(site)
        path = tmp_path / "lab.yml"
        path.write_text(yaml.safe_dump(spec))
        return labfile.load(path)

    def proxy_params(lab: labfile.LabFile) -> dict:
        params = Lab(lab, tmp_path / "state").site_params(0, lab.sites[0])
        return {k: v for k, v in params.items() if "utboundProxy" in k}

    gw = f"127.{UNIT_NET}.0.1"
    assert proxy_params(load(gateway="kamailio")) == {}
    assert proxy_params(load(gateway="kamailio", outbound_proxy="gateway")) == {
        "reg.1.outboundProxy.address": gw, "reg.1.outboundProxy.port": "5060", "reg.1.server.2.useOutboundProxy": "0"}
    assert proxy_params(load("sip-3.x", gateway="kamailio", outbound_proxy="gateway")) == {
        "reg.1.outboundProxy.address": gw, "reg.1.outboundProxy.port": "5060"}
    assert proxy_params(load("sip-2.x", gateway="kamailio", outbound_proxy="gateway", phones={
        "count": 1, "models": ["SoundPoint IP 650"]})) == {
        "voIpProt.SIP.outboundProxy.address": gw, "voIpProt.SIP.outboundProxy.port": "5060"}
    third = {"address": "127.0.0.5", "expires": 10, "overlap": 5}
    for site, words in (({"outbound_proxy": "gateway"}, r"outbound_proxy.*needs `gateway: kamailio`"),
                        ({"gateway": "kamailio", "outbound_proxy": "provider"}, "outbound_proxy"),
                        ({"gateway": "kamailio", "outbound_proxy": "gateway",
                          "servers": lab_spec("p", net=UNIT_NET)["sites"][0]["servers"] + [third]},
                         r"servers.*2.*address.*relays to the provider only")):
        with pytest.raises(FileError, match=words) as err:
            load(**site)
        assert "lab.yml" in str(err.value), err.value


def test_demo_compares_each_phones_times_with_the_ground_truth():
    """Unit: the demo's closing table agrees only within the sampling interval, and a phone the lab never saw
    move (or a report without an outage) does not agree."""
    from hil import demo_truth

    def truth(fail_at: float, back_at: float) -> dict:
        return {"ground_truth": {"phones": {"a": {"events": [
            {"kind": "working_server", "t": 50.0, "data": {"server": 1}},
            {"kind": "working_server", "t": fail_at, "data": {"server": 2}},
            {"kind": "working_server", "t": back_at, "data": {"server": 1}}]}}}}

    report = {"outages": [{"start": 100.0, "end": 130.0}],
              "phones": [{"mac": "a", "failover_s": 8.0, "recovery_s": 3.0}]}
    lines, ok = demo_truth.compare(report, truth(108.2, 133.1), 0.25)
    assert ok and lines[1].split()[-1] == "yes", lines
    lines, ok = demo_truth.compare(report, truth(108.3, 133.0), 0.25)
    assert not ok and "DISAGREES" in lines[-1], lines
    assert not demo_truth.compare(report, truth(90.0, 95.0), 0.25)[1]        # no move after the cut in the lab
    assert not demo_truth.compare({"outages": [], "phones": report["phones"]}, truth(108, 133), 0.25)[1]
