"""The namespace lab: fleet's real router driver against a real Linux kernel, OpenSSH, net-snmp and Kamailio.

Only the phones are emulated. Each outage mode is cut and restored through the
Linux SSH driver on the router namespace's own kernel and judged by what the
kernel then holds (link flags, routes, iptables rules, qdiscs) and by what the
controller host can still reach through the router (a SIP OPTIONS probe of the
provider, resolved through the provider's DNS). Needs root and Debian's
openssh-server, snmpd, kamailio, iptables; skipped with the reason otherwise
(`make test` as root installs them).
"""
from __future__ import annotations

import asyncio
import functools
import ipaddress
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from conftest import agrees_with_truth, BIN, ROOT, lab_spec, router_driver, run_fleet, unique_id, wait_until

pytestmark = [pytest.mark.lab, pytest.mark.slow]

SAMPLE = 0.25


def _why_skip() -> str | None:
    if os.geteuid() != 0:
        return "the namespace lab needs root (ip netns, sshd, snmpd): run the tests as root"
    if subprocess.run(["ip", "netns", "list"], capture_output=True).returncode != 0:
        return "`ip netns` does not work here (no network namespaces)"
    from hil.netns.daemons import missing_tools

    missing = missing_tools()
    if missing:
        return f"missing Debian packages: {' '.join(missing)} (as root: apt-get install {' '.join(missing)}, or `make test`)"
    return None


_SKIP = _why_skip()
if _SKIP:
    pytest.skip(_SKIP, allow_module_level=True)

from fleet.config import inventory  # noqa: E402
from fleet.drivers import router as routers  # noqa: E402
from fleet.drivers.errors import DeviceRefused  # noqa: E402
from fleet.drivers.probe import probe_provider  # noqa: E402
from fleet.drivers.router import Outage  # noqa: E402
from hil.netns import plan  # noqa: E402
from hil.netns.ns import RECORD  # noqa: E402


def _spec(name: str, phones: int) -> dict:
    """A namespace lab on a free net (hil.netlock): other suites on the machine may run their own."""
    spec = lab_spec(name, phones=phones, poll_interval=2.0)
    spec["backend"] = "netns"
    return spec


def _up(tmp: Path, spec: dict) -> tuple[Path, Path]:
    labfile, state, inv = tmp / "lab.yml", tmp / "state", tmp / "inventory.yml"
    labfile.write_text(yaml.safe_dump(spec))
    res = subprocess.run([BIN / "hil", "up", str(labfile), "--state-dir", str(state), "--inventory-out", str(inv),
                          "--ready-timeout", "40"], capture_output=True, text=True, timeout=90)
    log = (state / "lab.log").read_text()[-3000:] if (state / "lab.log").exists() else ""
    assert res.returncode == 0, res.stderr + log
    return state, inv


def _down(state: Path) -> subprocess.CompletedProcess:
    return subprocess.run([BIN / "hil", "down", "--state-dir", str(state)], capture_output=True, text=True, timeout=60)


def _lab_namespaces(net: int) -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return [line.split()[0] for line in out.splitlines() if line.startswith(plan.prefix(net) + "-")]


def _sh(ns: str, *argv: str) -> str:
    return subprocess.run(["ip", "netns", "exec", ns, *argv], capture_output=True, text=True, timeout=20).stdout


def _running(pid: int) -> bool:
    """Alive and not a zombie waiting for init to reap it."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0] != "Z"
    except (OSError, IndexError):
        return False


_wait = wait_until


class NsLab:
    def __init__(self, state: Path, inv: Path) -> None:
        self.state, self.inventory = state, inv
        self.control = json.loads((state / "control.json").read_text())["url"]
        self.net = json.loads((state / "control.json").read_text())["net"]
        self.router_ns = plan.router_ns(self.net, 0)

    def status(self) -> dict:
        import requests

        return requests.get(self.control + "/status", timeout=20).json()

    def routes(self) -> list[str]:
        return sorted(r.strip() for r in _sh(self.router_ns, "ip", "route", "show", "dev", "wan0").splitlines() if r.strip())

    def link_up(self) -> bool:
        return "UP" in json.loads(_sh(self.router_ns, "ip", "-j", "link", "show", "dev", "wan0"))[0]["flags"]

    def rules(self) -> list[str]:
        return [r for r in _sh(self.router_ns, "iptables", "-w", "-S", "FORWARD").splitlines() if "fleet-" in r]

    def qdisc(self) -> str:
        return _sh(self.router_ns, "tc", "qdisc", "show", "dev", "wan0").strip()

    def reach_provider(self):
        """What the controller host sees of the provider through the site router (DNS, then SIP OPTIONS)."""
        inv = inventory.load(str(self.inventory))
        host, _, port = inv.sites[0].dns.rpartition(":")
        return asyncio.run(probe_provider(inv.provider.name, inv.provider.port, (host, int(port)), timeout=1.0))


@pytest.fixture(scope="module")
def nslab(tmp_path_factory):
    state, inv = _up(tmp_path_factory.mktemp("netns"), _spec("netns", 4))
    lab = NsLab(state, inv)
    yield lab
    _down(state)


@pytest.fixture
def drv(nslab):
    with router_driver(nslab.inventory) as d:
        yield d


_oid = functools.partial(unique_id, "ns")   # a fresh outage id per call


def test_lab_is_real_and_every_phone_registered_with_both_kamailios(nslab):
    st = nslab.status()
    assert st["backend"] == "netns" and st["ready"] is True, st
    assert len(st["phones"]) == 4
    for phone in st["phones"]:
        assert phone["registrations"][0]["working_server"] == 1, phone
    exts = [str(1001 + i) for i in range(4)]
    for dump in (st["provider"]["bindings"], st["sites"][0]["gateway"]["bindings"]):
        assert all(f"AoR: {e}" in dump for e in exts), dump
    assert nslab.reach_provider().reachable


def test_no_route_in_any_lab_namespace_leaves_the_labs_ranges(nslab):
    allowed = [plan.LAN_RANGE, plan.WAN_RANGE, ipaddress.ip_network("127.0.0.0/8")]

    def inside(text: str) -> bool:
        net = ipaddress.ip_network(text, strict=False)
        return any(net.subnet_of(a) for a in allowed)

    checked = 0
    for ns in _lab_namespaces(nslab.net):
        for route in json.loads(_sh(ns, "ip", "-j", "-4", "route", "show", "table", "all") or "[]"):
            dst = route["dst"]
            assert dst != "default", (ns, route)
            if route.get("type") in ("local", "broadcast") or dst.startswith("127."):
                continue
            assert inside(dst), (ns, route)
            assert "gateway" not in route or inside(route["gateway"]), (ns, route)
            checked += 1
    # in the root namespace, the lab adds routes only through its own links, and only to its own ranges
    for route in json.loads(subprocess.run(["ip", "-j", "-4", "route", "show"], capture_output=True, text=True).stdout):
        if route.get("dev", "").startswith(plan.prefix(nslab.net) + "h"):
            assert route["dst"] != "default" and inside(route["dst"]), route
            assert "gateway" not in route or inside(route["gateway"]), route
            checked += 1
    assert checked >= 8


def test_link_down_on_the_real_kernel_and_its_routes_restored(nslab, drv):
    before = nslab.routes()
    assert any(" via " in r for r in before), before
    oid = _oid("link")
    outage = Outage(id=oid, mode="link-down", max_duration=60)
    cut = drv.cut(outage)
    assert cut.outcome == "cut" and cut.state.link_up is False, cut
    assert nslab.link_up() is False and nslab.routes() == []     # the kernel took the routes with the link
    assert not nslab.reach_provider().reachable
    back = drv.restore(outage)
    assert back.outcome == "restored" and back.state.link_up is True, back
    assert nslab.routes() == before, "the driver put back the routes the kernel dropped"
    assert _wait(lambda: nslab.reach_provider().reachable, 10, "provider reachable again")


@pytest.mark.parametrize("mode,kwargs", [("drop", {}), ("dns-fail", {}), ("degrade", {"loss": 1.0})])
def test_firewall_modes_on_iptables_nft(nslab, drv, mode, kwargs):
    oid = _oid(mode)
    outage = Outage(id=oid, mode=mode, max_duration=60, **kwargs)
    cut = drv.cut(outage)
    assert cut.outcome == "cut" and cut.state.shows(mode), cut
    rules = nslab.rules()
    assert len(rules) == 2 and all(f"fleet-{oid}" in r for r in rules), rules
    probe = nslab.reach_provider()
    assert not probe.reachable, probe
    if mode == "dns-fail":
        assert probe.stage == "dns", probe
    # the kernel really holds them (iptables-nft writes nft rules; loss is nft's `meta random`)
    if "nf_tables" in _sh(nslab.router_ns, "iptables", "--version") and shutil.which("nft"):
        ruleset = _sh(nslab.router_ns, "nft", "list", "chain", "ip", "filter", "FORWARD")
        assert ruleset.count(f"fleet-{oid}") == 2 or ruleset.count("drop") >= 2, ruleset
        assert ("meta random" in ruleset) == (mode == "degrade"), ruleset
    again = drv.cut(outage)
    assert again.outcome == "already-cut" and len(nslab.rules()) == 2
    back = drv.restore(outage)
    assert back.outcome == "restored" and not back.state.shows(mode), back
    assert nslab.rules() == []
    assert _wait(lambda: nslab.reach_provider().reachable, 10, "provider reachable again")


def test_degrade_rate_uses_tbf_under_our_handle(nslab, drv):
    oid = _oid("rate")
    throttled = Outage(id=oid, mode="degrade", max_duration=60, rate_kbit=256)
    cut = drv.cut(throttled)
    assert cut.outcome == "cut" and cut.state.qdisc_ours is True, cut
    assert nslab.qdisc().startswith("qdisc tbf 1fe1: root"), nslab.qdisc()
    assert drv.restore(throttled).outcome == "restored"
    assert "1fe1:" not in nslab.qdisc()


def test_degrade_delay_fails_before_the_cut_when_the_kernel_has_no_netem(nslab, drv):
    has_netem = Path("/sys/module/sch_netem").is_dir() or subprocess.run(
        ["sh", "-c", "modprobe -q sch_netem"], capture_output=True).returncode == 0
    oid = _oid("delay")
    delayed = Outage(id=oid, mode="degrade", max_duration=60, delay_ms=50)
    if has_netem:
        cut = drv.cut(delayed)
        assert cut.outcome == "cut" and "netem 1fe1:" in nslab.qdisc()
        assert drv.restore(delayed).outcome == "restored"
        return
    with pytest.raises(DeviceRefused) as err:
        drv.cut(delayed)
    assert "exited 73" in str(err.value) and "netem" in str(err.value), err.value
    # refused before anything changed: no rule, no qdisc, no dead-man armed, the outage unknown to the router
    assert nslab.rules() == [] and "1fe1:" not in nslab.qdisc() and nslab.link_up()
    assert not (Path(drv.router.state_dir) / f"{oid}.deadman").exists()
    assert drv.restore(delayed).outcome == "cancelled-before-cut"


def test_deadmans_switch_fires_on_the_real_router_and_brings_wan_and_routes_back(nslab, drv):
    before = nslab.routes()
    oid = _oid("deadman")
    cut = drv.cut(Outage(id=oid, mode="link-down", max_duration=2))
    assert cut.outcome == "cut" and "armed on the router" in cut.deadman, cut
    drv.close()                       # the controller is gone: nobody restores but the router itself
    assert nslab.link_up() is False
    _wait(lambda: nslab.link_up() and nslab.routes() == before, 20, "WAN and routes back by the dead-man")
    assert (Path(drv.router.state_dir) / f"{oid}.restored").read_text().startswith("deadman")
    assert _wait(lambda: nslab.reach_provider().reachable, 10, "provider reachable again")


def _truth_change_time(lab_status: dict, mac: str, server: int, after: float) -> float | None:
    for e in lab_status["ground_truth"]["phones"][mac]["events"]:
        if e["kind"] == "working_server" and e["data"]["server"] == server and e["t"] >= after:
            return e["t"]
    return None


@pytest.mark.parametrize("playbook", ["wan-outage-fallback.yml", "wan-drop-fallback.yml", "dns-failure-fallback.yml"])
def test_wan_outage_playbook_passes_on_the_real_router(nslab, worker_factory, redis_url, tmp_path, playbook):
    if not getattr(nslab, "worker", None):
        nslab.worker = worker_factory(nslab.inventory)
    res = run_fleet(["experiment", "run", str(ROOT / "playbooks" / playbook), "--inventory", str(nslab.inventory),
                     "--report-dir", str(tmp_path), "--json"], redis_url)
    assert "Traceback" not in res.stderr, res.stderr
    assert res.returncode == 0, res.stderr + res.stdout[-3000:]
    doc = json.loads(res.stdout)
    assert doc["passed"] is True and len(doc["phones"]) == 4
    _assert_times_agree_with_truth(nslab, doc)
    assert nslab.link_up() and nslab.rules() == []


def _assert_times_agree_with_truth(nslab, doc: dict) -> None:
    """Measured failover and recovery agree with the phones' own timeline within the sampling interval."""
    truth = nslab.status()
    outage = doc["outages"][0]
    for p in doc["phones"]:
        assert 0 < p["failover_s"] <= p["predicted_failover_max_s"], p
        assert 0 <= p["recovery_s"] <= p["predicted_recovery_max_s"], p     # 0: back before the router's answer
        t_fail = _truth_change_time(truth, p["mac"], 2, outage["start"])
        # the first return after the failover: a retry can land while the restore's answer is on its way back
        t_back = _truth_change_time(truth, p["mac"], 1, t_fail or outage["end"])
        assert t_fail is not None and t_back is not None, p["mac"]
        assert abs((outage["start"] + p["failover_s"]) - t_fail) <= SAMPLE, (p["mac"], outage, p["failover_s"], t_fail)
        assert agrees_with_truth(p["recovery_s"], outage["end"], outage.get("asked_end"), t_back, SAMPLE), \
            (p["mac"], outage, p["recovery_s"], t_back)


def test_fleet_status_agrees_with_kamailios_own_bindings_before_during_and_after_an_outage(nslab, worker_factory,
                                                                                          redis_url, drv):
    if not getattr(nslab, "worker", None):
        nslab.worker = worker_factory(nslab.inventory)
    exts = {p["mac"]: p["params"]["reg.1.address"] for p in yaml.safe_load(nslab.inventory.read_text())["sites"][0]["phones"]}

    def agreeing(working: int):
        """fleet status and both Kamailios' ul.dump, once every phone works on `working` and they agree."""
        out = run_fleet(["status", "--site", "hq", "--json"], redis_url).stdout
        # only this lab's phones: other labs of the session registered their own site "hq" in the same Redis
        rows = {r["mac"]: r for r in json.loads(out or "[]") if r["mac"] in exts}
        st = nslab.status()
        dumps = {1: st["provider"]["bindings"], 2: st["sites"][0]["gateway"]["bindings"]}
        if set(rows) != set(exts) or any(r["working_server"] != working for r in rows.values()):
            return None
        for mac, ext in exts.items():
            for server in rows[mac]["servers"]:
                if (server["state"] == "registered") != (f"AoR: {ext}" in dumps[server["index"]]):
                    return None
        return rows

    _wait(lambda: agreeing(1), 20, "fleet status and Kamailio agree: every phone on the provider", step=0.5)
    oid = _oid("agree")
    dropped = Outage(id=oid, mode="drop", max_duration=90)
    assert drv.cut(dropped).outcome == "cut"
    try:
        # the provider forgets a binding only when it expires (10 s here, usrloc timer 1 s)
        _wait(lambda: agreeing(2), 40, "fleet status and Kamailio agree: every phone on the gateway", step=0.5)
    finally:
        assert drv.restore(dropped).outcome == "restored"
    _wait(lambda: agreeing(1), 30, "fleet status and Kamailio agree: every phone back on the provider", step=0.5)



def _nslab_incidents(nslab, redis_url: str, since: float) -> list[dict]:
    """The incidents of this lab's phones that started after `since` (other labs of the session have a site hq too)."""
    mine = {p["mac"] for p in yaml.safe_load(nslab.inventory.read_text())["sites"][0]["phones"]}
    res = run_fleet(["incident", "list", "--json"], redis_url)
    assert res.returncode == 0, res.stderr
    return [i for i in json.loads(res.stdout) if set(i.get("baseline") or []) & mine and i["started"] >= since]


def test_a_wan_cut_on_the_real_router_outside_any_experiment_is_one_incident(nslab, worker_factory, redis_url, drv,
                                                                            tmp_path):
    """A real outage, as the collector sees it: the WAN cut on the router's own kernel (the driver straight, no
    `fleet experiment`, no lease), every phone followed to the gateway and back, one incident measured."""
    if not getattr(nslab, "worker", None):
        nslab.worker = worker_factory(nslab.inventory)
    macs = {p["mac"] for p in yaml.safe_load(nslab.inventory.read_text())["sites"][0]["phones"]}

    def working(server: int) -> bool:
        rows = json.loads(run_fleet(["status", "--site", "hq", "--json"], redis_url).stdout or "[]")
        mine = {r["mac"]: r["working_server"] for r in rows if r["mac"] in macs}
        return set(mine) == macs and set(mine.values()) == {server}

    _wait(lambda: working(1), 30, "every phone on the provider before the cut", step=0.5)
    t_cut = time.time()
    outage = Outage(id=_oid("incident"), mode="link-down", max_duration=120)
    assert drv.cut(outage).outcome == "cut"
    try:
        opened = _wait(lambda: _nslab_incidents(nslab, redis_url, t_cut - 1), 60, "an incident opened", step=0.5)
        _wait(lambda: working(2), 40, "every phone on the gateway", step=0.5)
    finally:
        t_restore = time.time()
        assert drv.restore(outage).outcome == "restored"
    _wait(lambda: [i for i in _nslab_incidents(nslab, redis_url, t_cut - 1) if i["status"] == "closed"], 90,
          "the incident closed", step=0.5, state=lambda: _nslab_incidents(nslab, redis_url, t_cut - 1))
    (incident,) = _nslab_incidents(nslab, redis_url, t_cut - 1)
    assert incident["id"] == opened[0]["id"]
    res = run_fleet(["incident", "show", incident["id"], "--json", "--inventory", str(nslab.inventory),
                     "--report-dir", str(tmp_path)], redis_url)
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    assert doc["observed_not_caused"] is True and sorted(p["mac"] for p in doc["phones"]) == sorted(macs)
    slowest = max(p["predicted_failover_max_s"] for p in doc["phones"])
    assert doc["detected"] - t_cut <= 2 * slowest, (doc["detected"] - t_cut, slowest)
    assert doc["never_failed_over"] == [] and doc["restored"] >= t_restore
    for p in doc["phones"]:
        assert p["failover_s"] is not None and p["recovery_s"] is not None, p
        assert p["failover_s"] <= p["predicted_failover_max_s"], p

def _pcap_udp_payloads(data: bytes) -> list[bytes]:
    """The UDP payloads of an Ethernet pcap stream (tcpdump -w -), enough to read SIP off the wire."""
    import struct

    if len(data) < 24:
        return []
    endian = "<" if data[:4] == b"\xd4\xc3\xb2\xa1" else ">"
    out, pos = [], 24
    while pos + 16 <= len(data):
        incl = struct.unpack(endian + "I", data[pos + 8:pos + 12])[0]
        frame = data[pos + 16:pos + 16 + incl]
        pos += 16 + incl
        if len(frame) >= 42 and frame[12:14] == b"\x08\x00" and frame[23] == 17:
            ihl = (frame[14] & 0x0F) * 4
            out.append(frame[14 + ihl + 8:])
    return out


def test_tcpdump_on_the_router_streams_the_sip_on_the_wan_over_ssh(nslab, drv):
    """A wire capture as a collector would take it: tcpdump on the router, a pcap streamed back over SSH."""
    if not drv.run("command -v tcpdump", check=False).strip():
        pytest.skip("tcpdump is not installed on the router (apt-get install tcpdump)")
    out = drv.client.exec_command("timeout 6 tcpdump -U -n -w - -i wan0 -c 4 'udp port 5060' 2>/dev/null", timeout=15)[1]
    payloads = _pcap_udp_payloads(out.read())
    methods = {p.split(b" ", 1)[0] for p in payloads}
    assert b"REGISTER" in methods and b"SIP/2.0" in methods, payloads[:2]


def test_add_fallback_gateway_rollout_passes_on_the_real_router(nslab, worker_factory, redis_url):
    """The shipped rollout, with its failover drill after the canary, against the real router and Kamailio."""
    if not getattr(nslab, "worker", None):
        nslab.worker = worker_factory(nslab.inventory)
    res = run_fleet(["rollout", "run", str(ROOT / "playbooks" / "add-fallback-gateway.yml"), "--inventory",
                     str(nslab.inventory), "--json"], redis_url, timeout=240, cwd=ROOT)
    assert "Traceback" not in res.stderr, res.stderr
    assert res.returncode == 0, res.stderr[-3000:] + res.stdout[-2000:]
    out = json.loads(res.stdout)
    assert out["status"] == "done" and out["counts"] == {"total": 4, "verified": 4}, out
    gateway = nslab.status()["sites"][0]["gateway"]["bindings"]
    assert all(f"AoR: {1001 + i}" in gateway for i in range(4)), gateway
    assert nslab.link_up() and nslab.rules() == []


def _snmp_inventory(nslab, tmp_path: Path, version: str) -> Path:
    """The same site, its router driven over SNMP (net-snmp on the router namespace) instead of SSH."""
    doc = yaml.safe_load(nslab.inventory.read_text())
    r = doc["sites"][0]["router"]
    doc["sites"][0]["router"] = {"driver": "snmp", "address": r["address"], "port": plan.SNMP_PORT,
                                 "credentials": "router_snmp_v3" if version == "3" else "router_snmp_v2c",
                                 "snmp_version": version, "wan_interface": "wan0", "allow_without_deadman": True}
    path = tmp_path / f"inventory-snmp{version}.yml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def test_snmp_v3_authpriv_sets_ifadminstatus_on_real_snmpd_and_the_kernel_drops_the_routes(nslab, tmp_path):
    before = nslab.routes()
    v2c = inventory.load(str(_snmp_inventory(nslab, tmp_path, "2c")))
    d2 = routers.connect(v2c.sites[0].router, inventory.Secrets(v2c).credentials(v2c.sites[0].router.credentials))
    assert d2.wan_state().link_up is True
    inv = inventory.load(str(_snmp_inventory(nslab, tmp_path, "3")))
    d = routers.connect(inv.sites[0].router, inventory.Secrets(inv).credentials(inv.sites[0].router.credentials))
    oid = _oid("snmp")
    outage = Outage(id=oid, mode="link-down", max_duration=60)
    cut = d.cut(outage)
    assert cut.state.link_up is False and nslab.link_up() is False, cut
    back = d.restore(outage)
    assert back.state.link_up is True and nslab.link_up() is True, back
    # a real kernel: the static route through the WAN went with the link, and SNMP has no way to put it back
    lost = [r for r in before if r not in nslab.routes()]
    assert lost and all(" via " in r for r in lost), (before, nslab.routes())
    for r in lost:
        subprocess.run(["ip", "-n", nslab.router_ns, "route", "replace", *r.split(), "dev", "wan0"], check=True)
    assert nslab.routes() == before


def test_controller_sigkilled_mid_outage_the_real_router_restores_wan_and_routes(nslab, worker_factory, redis_url,
                                                                                    tmp_path):
    """The controller dies (SIGKILL: no cleanup at all) while the WAN is down; the router's dead-man brings the link
    and the routes through it back by itself, and the dead controller's lease lapses by itself."""
    from fleet.state.store import Store

    if not getattr(nslab, "worker", None):
        nslab.worker = worker_factory(nslab.inventory)
    before = nslab.routes()
    state_dir = Path(yaml.safe_load(Path(nslab.inventory).read_text())["sites"][0]["router"]["state_dir"])
    pb = tmp_path / "long.yml"
    pb.write_text("kind: experiment\nname: killed\nsite: hq\nsteps:\n"
                  "  - {name: cut, outage: link-down, max_duration: 8}\n  - {name: linger, wait: 120}\n"
                  "  - {name: back, restore: true}\n")
    env = dict(os.environ, FLEET_REDIS_URL=redis_url, FLEET_LEASE_TTL="5")
    proc = subprocess.Popen([BIN / "fleet", "experiment", "run", str(pb), "--inventory", str(nslab.inventory),
                             "--report-dir", str(tmp_path)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        _wait(lambda: not nslab.link_up(), 40, "the cut")
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)
        _wait(lambda: nslab.link_up() and nslab.routes() == before, 30, "WAN and its routes back by the dead-man")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    marks = sorted(state_dir.glob("*-o1.restored"), key=lambda p: p.stat().st_mtime)
    assert marks and marks[-1].read_text().startswith("deadman"), [m.read_text() for m in marks]
    _wait(lambda: nslab.reach_provider().reachable, 10, "provider reachable again")
    _wait(lambda: Store(redis_url).lease_info("hq")[0] is None, 15, "the killed controller's lease lapsed")


def test_wan_outage_playbook_passes_with_the_snmp_driver_on_a_managed_router(nslab, worker_factory, redis_url, tmp_path):
    from hil.netns.daemons import start_route_keeper

    keeper = start_route_keeper(nslab.router_ns, "wan0", [r for r in nslab.routes() if " via " in r])
    if getattr(nslab, "worker", None):
        nslab.worker.stop()
        nslab.worker = None
    inv = _snmp_inventory(nslab, tmp_path, "3")
    worker_factory(inv)
    try:
        res = run_fleet(["experiment", "run", str(ROOT / "playbooks" / "wan-outage-fallback.yml"), "--inventory", str(inv),
                         "--report-dir", str(tmp_path), "--json"], redis_url)
        assert "Traceback" not in res.stderr, res.stderr
        assert res.returncode == 0, res.stderr + res.stdout[-3000:]
        doc = json.loads(res.stdout)
        assert doc["passed"] is True and len(doc["phones"]) == 4
        assert all(p["failover_s"] and p["recovery_s"] for p in doc["phones"]), doc["phones"]
        assert "none: SNMP cannot schedule a restore" in doc["outages"][0]["deadman"]
        _assert_times_agree_with_truth(nslab, doc)
    finally:
        keeper.kill()
    assert nslab.link_up()


@pytest.mark.parametrize("kill_at", ["sshd-hq.pid", "ready"])
def test_hil_down_after_a_sigkilled_hil_up_removes_every_namespace_and_process(nslab, tmp_path, kill_at):
    """Killed halfway (its router's sshd running) or once ready (a second lab side by side with this module's)."""
    labfile, state = tmp_path / "lab.yml", tmp_path / "state"
    labfile.write_text(yaml.safe_dump(_spec("killed", 2)))
    err = tmp_path / "hil-up.stderr"
    with err.open("w") as err_file:
        up = subprocess.Popen([BIN / "hil", "up", str(labfile), "--state-dir", str(state), "--foreground"],
                              stdout=subprocess.DEVNULL, stderr=err_file, start_new_session=True)
    _wait(lambda: (state / kill_at).exists() or up.poll() is not None, 40, f"the killed lab reached {kill_at}")
    assert up.poll() is None, f"the second lab did not start (exit {up.poll()}): {err.read_text()[-3000:]}"
    if kill_at == "ready":
        assert json.loads((state / "ready").read_text())["ok"] is True
        assert nslab.status()["ready"] is True and nslab.reach_provider().reachable, "two labs run side by side"
    os.kill(up.pid, signal.SIGKILL)     # the lab process alone: its children and daemons are orphaned
    up.wait(10)
    killed_net = json.loads((state / RECORD).read_text())["net"]   # the net it had claimed (its lock went with it)
    left = _lab_namespaces(killed_net)
    assert left, "the killed lab had created namespaces"
    pids = set()
    for ns in left:
        pids |= {int(p) for p in subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout.split()}
    res = _down(state)
    assert res.returncode == 0, res.stderr
    assert _lab_namespaces(killed_net) == []
    alive = [p for p in pids if _running(p)]
    assert alive == [], f"processes of the killed lab still running: {alive}"
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout
    assert f"{plan.prefix(killed_net)}h" not in links
    assert nslab.status()["ready"] is True, "the other lab was left alone"


def test_hil_down_removes_the_lab(nslab):
    pids = set()
    for ns in _lab_namespaces(nslab.net):
        pids |= {int(p) for p in subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout.split()}
    assert pids, "the lab's daemons and phones run in its namespaces"
    res = _down(nslab.state)
    assert res.returncode == 0, res.stderr
    assert _lab_namespaces(nslab.net) == []
    assert [p for p in pids if _running(p)] == []
