"""The lab side of issue 10: per-server evidence a real site has, from the virtual lab.

One single-site lab with the phones' invented syslog registration line switched off:
- the userspace router answers fleet's own capture command (`tcpdump -U -w - ...` for the linux platform) over
  its SSH with pcap of the SIP it relays, decoded here with fleet's decoder;
- the phones send no registration syslog line;
- with Kamailio installed the site's gateway is Kamailio: `kamcmd ul.dump` over the router's SSH, parsed by
  fleet's gateway bindings collector, agrees with Kamailio's own dump and the lab's ground truth for every phone
  before, during and after a WAN outage; its siptrace sends HEP v3 with the phones' REGISTERs to the site's
  collector address. Without Kamailio those tests skip with the reason and the gateway is the lab's own.

Marked `lab`.
"""
from __future__ import annotations

import asyncio
import re
import socket
import time

import asyncssh
import pytest
import yaml

from fleet.evidence.sources import gateway_bindings as gb
from fleet.evidence.wire import hep
from fleet.evidence.wire import sip as wire_sip
from fleet.config import platforms
from fleet.evidence.wire.pcap import PcapStreamParser, capture_command
from fleet.evidence.wire.decode import FrameDecoder
from fleet.evidence.wire.attribution import WireTarget
from fleet.state.observe import REGISTERED, UNREGISTERED
from soundpoint.redisboot import free_port
from hil import kamailio as kam
from hil.phone_types import UP
from conftest import lab_spec, wait_until

pytestmark = pytest.mark.lab
PHONES = 3
KAMAILIO_MISSING = kam.unavailable(siptrace=True)
LINUX_CAPTURE = platforms.get("linux_ssh").capture_template()     # the lab router is a Linux one


def _udp(port: int) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    s.bind(("127.0.0.1", port))
    s.setblocking(False)
    return s


def _drain(s: socket.socket) -> list[bytes]:
    out = []
    while True:
        try:
            out.append(s.recv(65535))
        except BlockingIOError:
            return out


class Site:
    """The running lab plus what the test listens on (syslog, HEP) and how it reaches the router."""

    def __init__(self, lab, syslog: socket.socket, hep_sock: socket.socket | None) -> None:
        self.lab, self.syslog, self.hep = lab, syslog, hep_sock
        inv = yaml.safe_load(lab.inventory.read_text())
        self.site = inv["sites"][0]
        self.router = self.site["router"]
        self.phones = {p["mac"]: (p["address"], p["params"]["reg.1.address"]) for p in self.site["phones"]}
        gateway = self.site["gateway"]      # an address, or {address, platform} for a Kamailio gateway
        self.gateway = (gateway["address"] if isinstance(gateway, dict) else gateway, 5060)

    async def ssh(self) -> asyncssh.SSHClientConnection:
        return await asyncssh.connect(self.router["address"], port=self.router["port"], username="admin",
                                      client_keys=[str(self.lab.state / "router_client_key")],
                                      known_hosts=self.router["known_hosts"])

    def run(self, command: str) -> asyncssh.SSHCompletedProcess:
        async def go():
            async with await self.ssh() as conn:
                return await conn.run(command, check=False, timeout=20)
        return asyncio.run(go())

    def truth(self) -> dict:
        return self.lab.status()["ground_truth"]["phones"]


@pytest.fixture(scope="module")
def site(lab_factory):
    spec = lab_spec("wirelab", phones=PHONES)
    spec["syslog_registration_line"] = False
    collector = spec["sites"][0]["collector"]
    syslog = _udp(int(collector["syslog"].rsplit(":", 1)[1]))     # bound before the phones boot: nothing missed
    hep_sock = None
    if not KAMAILIO_MISSING:
        hep_port = free_port()
        hep_sock = _udp(hep_port)
        spec["sites"][0]["gateway"] = "kamailio"
        collector["hep"] = f"127.0.0.1:{hep_port}"
    lab = lab_factory(spec)
    yield Site(lab, syslog, hep_sock)
    syslog.close()
    if hep_sock:
        hep_sock.close()


# ----------------------------------------------------------------------------------------------- capture

async def _capture(site: Site, interface: str, done, timeout: float = 25.0) -> tuple[list, bytes]:
    """Run fleet's capture command over the router's SSH; decode frames with fleet's decoder until `done(msgs)`."""
    command = capture_command(LINUX_CAPTURE, interface)
    parser, decoder, msgs = PcapStreamParser(), FrameDecoder(), []
    async with await site.ssh() as conn:
        proc = await conn.create_process(command, encoding=None)
        deadline = time.monotonic() + timeout
        try:
            while not done(msgs) and time.monotonic() < deadline:
                try:
                    data = await asyncio.wait_for(proc.stdout.read(65536), 1.0)
                except asyncio.TimeoutError:
                    continue
                if not data:
                    break
                for rec in parser.feed(data):
                    dg = decoder.decode(rec.t, rec.linktype, rec.frame)
                    if dg is None:
                        continue
                    try:
                        msgs.append((dg, wire_sip.parse(dg.payload), rec.t))
                    except Exception:    # noqa: BLE001 - not SIP: the test only wants SIP
                        pass
        finally:
            proc.close()
        err = b""
        try:
            err = await asyncio.wait_for(proc.stderr.read(4096), 2)
        except asyncio.TimeoutError:
            pass
    return msgs, err


def _register_answered(msgs, user: str, dst_host: str) -> bool:
    """A REGISTER of `user` to dst_host:5060 and a 200 for the same Call-ID and CSeq back from there."""
    sent = {(m.call_id, m.cseq) for dg, m, _ in msgs if m.method == "REGISTER" and dg.dst == (dst_host, 5060)
            and f"sip:{user}@" in (m.get("from") or "")}
    return any(m.status == 200 and (m.call_id, m.cseq) in sent and dg.src == (dst_host, 5060) for dg, m, _ in msgs)


def test_router_capture_over_ssh_shows_each_phones_register_and_200_on_both_sides(site):
    st = site.lab.status()
    wan_ip = st["sites"][0]["router"]["wan"]
    provider = st["provider"]["address"].rsplit(":", 1)[0]
    users = [u for _, u in site.phones.values()]

    def lan_done(msgs):
        lan_dst = {dg.dst[0] for dg, m, _ in msgs if m.method == "REGISTER" and dg.src[0] in ips and dg.dst[1] == 5060}
        return all(any(_register_answered(msgs, u, d) for d in lan_dst) for u in users) and all(
            _register_answered(msgs, u, site.gateway[0]) for u in users)

    ips = {ip for ip, _ in site.phones.values()}
    msgs, err = asyncio.run(_capture(site, "any", lambda m: lan_done(m) and all(
        _register_answered(m, u, provider) for u in users)))
    assert b"listening on any" in err, err
    assert msgs, "no SIP in the capture"
    # WAN side: the router's own address talks to the provider, for every phone
    for u in users:
        assert _register_answered(msgs, u, provider), (u, [(dg.src, dg.dst, m.method or m.status) for dg, m, _ in msgs][-30:])
    assert all(dg.src[0] == wan_ip or dg.dst[0] == wan_ip for dg, m, _ in msgs if provider in (dg.src[0], dg.dst[0]))
    # LAN side: each phone's own address sends its REGISTERs and gets the 200s
    assert lan_done(msgs), [(dg.src, dg.dst, m.method or m.status) for dg, m, _ in msgs][-30:]
    # the gateway runs on the router (the lab's own registrar, or Kamailio through its siptrace): the LAN side
    # of the capture has its REGISTERs and 200s too, with the phones' own addresses
    for u in users:
        assert _register_answered(msgs, u, site.gateway[0]), u
    assert {dg.src[0] for dg, m, _ in msgs if m.method == "REGISTER" and dg.dst == site.gateway} == ips
    # real capture times, in order within a second of the wall clock
    times = [t for _, _, t in msgs]
    assert times == sorted(times) and abs(times[-1] - time.time()) < 60


def test_capture_on_the_wan_interface_only_and_its_end_with_the_ssh_channel(site):
    provider = site.lab.status()["provider"]["address"].rsplit(":", 1)[0]
    users = [u for _, u in site.phones.values()]
    msgs, err = asyncio.run(_capture(site, "wan0", lambda m: all(_register_answered(m, u, provider) for u in users)))
    assert b"listening on wan0" in err
    wan_ip = site.lab.status()["sites"][0]["router"]["wan"]
    assert msgs and all(wan_ip in (dg.src[0], dg.dst[0]) for dg, _, _ in msgs), "wan0 shows only the WAN side"
    # the client closed the channel: the capture ends (with its next packet, as tcpdump does on a broken pipe)
    wait_until(lambda: site.lab.status()["sites"][0]["router"]["captures"] == [], 20, "the router's captures ended")


def test_capture_of_an_unknown_interface_fails_as_tcpdump_does(site):
    res = site.run("exec tcpdump -U -n -s 0 -w - -i eth7 'udp and port 5060'")
    assert res.exit_status == 1 and "eth7: No such device exists" in res.stderr, res


# ----------------------------------------------------------------------------------------------- syslog off

def test_phones_send_no_registration_syslog_line_when_switched_off(site):
    """Every phone registered (and refreshed) with both servers, yet no registration line reached the syslog
    collector; the lab's status shows the REGISTERs the phones sent meanwhile."""
    users = [u for _, u in site.phones.values()]

    def refreshed():
        reqs = site.lab.status()["provider"]["requests"]
        counts = {u: sum(1 for r in reqs if r["method"] == "REGISTER" and r["user"] == u and r["authenticated"])
                  for u in users}
        return counts if all(c >= 2 for c in counts.values()) else None

    wait_until(refreshed, 30, "two authenticated REGISTERs from every phone at the provider")
    truth = site.truth()
    assert all(truth[mac]["current"]["servers"]["1"] == {"1": UP, "2": UP} for mac in site.phones), truth
    lines = _drain(site.syslog)
    assert not [line for line in lines if b"registration" in line], lines[:5]


def test_syslog_line_switches_are_per_phone_and_on_by_default():
    """The registration line's switch takes the call line with it, unless a lab keeps the call line alone."""
    from hil import phone_reports

    class Phone:
        pass

    phone = Phone()
    assert phone_reports.sends_registration_line(phone) and phone_reports.sends_call_line(phone)
    phone.syslog_registration_line = False
    assert not phone_reports.sends_registration_line(phone) and not phone_reports.sends_call_line(phone)
    phone.syslog_call_line = True
    assert phone_reports.sends_call_line(phone) and not phone_reports.sends_registration_line(phone)


# ----------------------------------------------------------------------------------------------- Kamailio

def _dump_says(dump: str) -> dict[str, bool]:
    """Kamailio's own words, read without fleet: per AoR user, whether a contact with time left is there."""
    out: dict[str, bool] = {}
    for block in re.split(r"\n\s*AoR:\s*", dump)[1:]:
        user = block.split()[0].split("@")[0]
        expires = [int(x) for x in re.findall(r"Expires:\s*(\d+)", block)]
        out[user] = any(e > 0 for e in expires)
    return out


def _agreement(site: Site, before: str = "") -> tuple[dict, dict, dict]:
    """(collector, Kamailio's own dump, lab ground truth): per phone, registered at server 2 or not.
    `before`: a command run in the same SSH command just ahead of the dump."""
    res = site.run(before + gb.platform("kamailio").command)
    assert res.exit_status == 0 and "error:" not in res.stderr, res.stderr
    dump = res.stdout.decode() if isinstance(res.stdout, bytes) else res.stdout
    targets = [WireTarget(mac, 1, 2, site.gateway, user, phone_ip=ip) for mac, (ip, user) in site.phones.items()]
    obs = gb.observations(gb.platform("kamailio").parse(dump, None), targets, time.time())
    collector = {o.mac: o.state for o in obs}
    own = _dump_says(dump)
    kamailio = {mac: REGISTERED if own.get(user) else UNREGISTERED for mac, (_, user) in site.phones.items()}
    truth = site.truth()
    lab = {mac: REGISTERED if truth[mac]["current"]["servers"]["1"]["2"] == UP else UNREGISTERED for mac in site.phones}
    return collector, kamailio, lab


def _working(site: Site, server: int) -> bool:
    truth = site.truth()
    return all(truth[mac]["current"].get("working_server", {}).get("1") == server for mac in site.phones)


@pytest.mark.skipif(KAMAILIO_MISSING is not None, reason=str(KAMAILIO_MISSING))
def test_inventory_names_the_kamailio_gateway_and_its_hep_as_evidence_sources(site):
    assert site.site["gateway"] == {"address": site.gateway[0], "platform": "kamailio"}
    assert site.site["capture"] == ["router lan0", f"hep {site.lab.spec['sites'][0]['collector']['hep']}"]


@pytest.mark.skipif(KAMAILIO_MISSING is not None, reason=str(KAMAILIO_MISSING))
def test_kamailio_ul_dump_over_router_ssh_and_the_bindings_collector_agree_through_an_outage(site):
    phases = {}
    wait_until(lambda: _working(site, 1), 30, "every phone working on server 1")
    phases["before"] = _agreement(site)
    try:
        cut = site.run("ip link set dev wan0 down")
        assert cut.exit_status == 0, cut.stderr
        wait_until(lambda: _working(site, 2), 40, "every phone failed over to the Kamailio gateway")
        phases["during"] = _agreement(site)
    finally:
        site.run("ip link set dev wan0 up && ip route replace default via 203.0.113.1 dev wan0")
    wait_until(lambda: _working(site, 1), 40, "every phone back on server 1")
    phases["after"] = _agreement(site)
    for phase, (collector, kamailio, lab) in phases.items():
        assert set(collector) == set(site.phones), (phase, collector)
        assert collector == kamailio == lab, (phase, collector, kamailio, lab)
        assert set(collector.values()) == {REGISTERED}, (phase, collector)
    # the collector reads Kamailio, not the phones: a binding the gateway drops is gone for it at once, while the
    # phone still believes itself registered until its next refresh puts the binding back
    mac, (_, user) = next(iter(site.phones.items()))
    # s: keeps kamcmd from sending 1001 as a number; the dump follows at once, before the phone's next refresh
    collector, kamailio, _ = _agreement(site, before=f"kamcmd ul.rm location s:{user} >&2 && ")
    assert collector[mac] == kamailio[mac] == UNREGISTERED, (collector, kamailio)
    assert [m for m, state in collector.items() if state == REGISTERED] == [m for m in site.phones if m != mac]
    wait_until(lambda: (lambda c, k, t: c == k == t and set(c.values()) == {REGISTERED})(*_agreement(site)), 20,
               "the phone's refresh restored its binding, and all three agree again")


@pytest.mark.skipif(KAMAILIO_MISSING is not None, reason=str(KAMAILIO_MISSING))
def test_kamailio_siptrace_sends_hep_with_every_phones_register_to_the_site_collector(site):
    users = {u for _, u in site.phones.values()}
    seen: list = []

    def every_register():
        for data in _drain(site.hep):
            try:
                pkt = hep.parse(data)
                seen.append((pkt, wire_sip.parse(pkt.payload)))
            except Exception:     # noqa: BLE001 - anything else on the port is not the evidence asked for
                continue
        registered = {(m.get("from") or "").split("sip:", 1)[-1].split("@")[0] for pkt, m in seen
                      if m.method == "REGISTER" and pkt.dst == site.gateway}
        answered = {m.call_id for pkt, m in seen if m.status == 200 and pkt.src == site.gateway}
        ok = users <= registered and all(any(m.call_id in answered for _, m in seen
                                             if m.method == "REGISTER" and f"sip:{u}@" in (m.get("from") or ""))
                                         for u in users)
        return ok or None

    wait_until(every_register, 30, f"HEP with REGISTER and 200 for {sorted(users)}")
    phone_ips = {ip for ip, _ in site.phones.values()}
    assert {pkt.src[0] for pkt, m in seen if m.method == "REGISTER"} <= phone_ips
    assert all(pkt.proto_type == hep.PROTO_SIP for pkt, _ in seen)


# ----------------------------------------------------------------------------------------------- units

def test_router_capture_understands_fleets_capture_commands_and_refuses_what_tcpdump_would():
    import shlex

    from hil.router_capture import CaptureArgsError, parse_args

    argv = shlex.split(capture_command(LINUX_CAPTURE, "lan0", ports=(5060, 5070), hosts=("127.19.0.1", "127.69.0.10")))
    assert argv[:2] == ["exec", "tcpdump"]
    spec = parse_args(argv[2:])
    assert spec.interfaces == ("lan0",) and spec.ports == {5060, 5070}
    assert spec.hosts == {"127.19.0.1", "127.69.0.10"}
    assert spec.matches("lan0", ("127.119.0.2", 5060), ("127.19.0.1", 5060))
    assert not spec.matches("wan0", ("127.119.0.2", 5060), ("127.19.0.1", 5060))
    assert not spec.matches("lan0", ("127.119.0.2", 5060), ("127.19.0.9", 5060)), "host filter"
    assert not spec.matches("lan0", ("127.119.0.2", 40000), ("127.19.0.1", 53)), "port filter"
    assert parse_args(shlex.split(capture_command(LINUX_CAPTURE, "any"))[2:]).interfaces == ("lan0", "wan0")
    for bad, word in ((["-w", "/tmp/x.pcap", "-i", "lan0"], "only streams"), (["-w", "-", "-i", "eth9"], "No such device"),
                      (["-w", "-", "-X"], "not emulated"), (["-w", "-", "-i"], "requires an argument"),
                      (["-w", "-", "host", "nowhere.example"], "unknown host")):
        with pytest.raises(CaptureArgsError, match=word):
            parse_args(bad)


def test_router_capture_frames_decode_with_fleets_decoder_and_hep_from_kamailio_is_read():
    from fleet.evidence.wire.hep import encode
    from hil.router_capture import hep3_sip, pcap_header, pcap_record, udp_frame

    payload = b"REGISTER sip:127.19.0.1 SIP/2.0\r\nCall-ID: a@b\r\nCSeq: 1 REGISTER\r\n\r\n"
    stream = pcap_header() + pcap_record(1764000000.25, udp_frame(("127.119.0.2", 5060), ("127.19.0.1", 5060), payload))
    parser = PcapStreamParser()
    recs = parser.feed(stream[:30]) + parser.feed(stream[30:])
    assert len(recs) == 1 and recs[0].t == pytest.approx(1764000000.25)
    dg = FrameDecoder(fast_path=False).decode(recs[0].t, recs[0].linktype, recs[0].frame)
    assert dg is not None and (dg.src, dg.dst, dg.payload) == (("127.119.0.2", 5060), ("127.19.0.1", 5060), payload)
    hep_bytes = encode(("127.119.0.2", 5060), ("127.19.0.1", 5060), 1764000000.5, payload)
    assert hep3_sip(hep_bytes) == (pytest.approx(1764000000.5), ("127.119.0.2", 5060), ("127.19.0.1", 5060), payload)
    for junk in (b"", b"HEP3", hep_bytes[:20], b"HEP3\xff\xff" + hep_bytes[6:], b"\x01" * 40):
        assert hep3_sip(junk) is None


def test_lab_file_gateway_and_hep_options_are_validated(tmp_path):
    from soundpoint.yamlfile import FileError
    from hil import labfile

    base = lab_spec("v", phones=1)
    ok = dict(base, syslog_registration_line=False)
    ok["sites"] = [dict(base["sites"][0], gateway="kamailio",
                        collector=dict(base["sites"][0]["collector"], hep="127.0.0.1:9999"))]
    path = tmp_path / "ok.yml"
    path.write_text(yaml.safe_dump(ok))
    lab = labfile.load(path)
    assert lab.sites[0].gateway == "kamailio" and lab.sites[0].collector.hep == "127.0.0.1:9999"
    assert lab.syslog_registration_line is False
    for change, words in (({"gateway": "asterisk"}, "gateway"),
                          ({"collector": dict(base["sites"][0]["collector"], hep="127.0.0.1:9999")}, "gateway: kamailio"),
                          ({"gateway": "kamailio", "collector": dict(base["sites"][0]["collector"], hep="10.0.0.1:9060")},
                           "loopback")):
        bad = dict(base, sites=[dict(base["sites"][0], **change)])
        path.write_text(yaml.safe_dump(bad))
        with pytest.raises(FileError, match=words):
            labfile.load(path)
    path.write_text(yaml.safe_dump(dict(base, syslog_registration_line="no")))
    with pytest.raises(FileError, match="syslog_registration_line"):
        labfile.load(path)
