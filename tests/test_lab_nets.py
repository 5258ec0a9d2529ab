"""Labs choose their networks under a lock (hil.netlock), so two suites or two demos share one machine.

Units run the lock against a private lock directory ($HIL_LOCK_DIR) with holders in child processes (a lock is
per process: the kernel drops it when its holder ends); the lab test starts real labs with `hil up`.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap

import pytest
import yaml

from conftest import BIN, ROOT, lab_spec, wait_until
from hil import netlock
from hil.limits import fd_targets

HOLD = textwrap.dedent("""
    import sys, time
    from hil import netlock
    netlock._bound_sockets = lambda: []    # a stand-in for another lab: the suite's real labs' sockets are not its
    c = netlock.claim(sys.argv[1] if sys.argv[1] == "auto" else int(sys.argv[1]), int(sys.argv[2]), lab=sys.argv[3],
                      state="/srv/" + sys.argv[3])
    print(c.net, flush=True)
    time.sleep(120)
""")


def own_sockets_only(found: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Bound sockets of this process only: labs the rest of the suite runs meanwhile bind 127.x addresses too."""
    own = {int(target[8:-1]) for target in fd_targets() if target.startswith("socket:[")}
    return [(octet, inode) for octet, inode in found if inode in own]


@pytest.fixture
def locks(tmp_path, monkeypatch):
    monkeypatch.setenv("HIL_LOCK_DIR", str(tmp_path / "locks"))
    real = netlock._bound_sockets
    monkeypatch.setattr(netlock, "_bound_sockets", lambda: own_sockets_only(real()))
    holders: list[subprocess.Popen] = []

    def hold(net: int | str, sites: int = 1, lab: str = "other") -> tuple[subprocess.Popen, int]:
        proc = subprocess.Popen([sys.executable, "-c", HOLD, str(net), str(sites), lab], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env=dict(os.environ))
        holders.append(proc)
        line = proc.stdout.readline()
        assert line.strip().isdigit(), f"holder did not claim: {line!r} {proc.stderr.read() if proc.poll() is not None else ''}"
        return proc, int(line)

    yield hold
    for proc in holders:
        proc.kill()
        proc.wait(10)


def test_blocks_follow_the_labs_address_plan():
    assert netlock.userspace_blocks(21, 1) == ["127.21", "127.61", "127.71", "127.121"]
    two = set(netlock.userspace_blocks(31, 2))
    assert two == {"127.31", "127.32", "127.71", "127.81", "127.82", "127.131", "127.132"}
    assert set(netlock.userspace_blocks(21, 1)) & two == {"127.71"}     # nets ten apart collide: auto skips such


def test_auto_takes_a_net_whose_blocks_no_running_lab_holds(locks):
    _, first = locks("auto", 2, "suite-a")
    _, second = locks("auto", 1, "suite-b")
    a, b = set(netlock.userspace_blocks(first, 2)), set(netlock.userspace_blocks(second, 1))
    assert not a & b, (first, second, a & b)
    mine = netlock.claim("auto", 1, lab="mine")
    try:
        assert not set(mine.blocks) & (a | b)
    finally:
        mine.release()


def test_a_lab_after_another_does_not_get_the_net_the_other_just_gave_back(locks):
    """Same net, same MACs: a suite's rollout records in Redis, keyed by MAC, would carry over to the next lab."""
    first = netlock.claim("auto", 1, lab="first")
    first.release()
    second = netlock.claim("auto", 1, lab="second")
    second.release()
    assert second.net != first.net, (first.net, second.net)
    seen = set()
    for i in range(len(netlock.USERSPACE_NETS) + 5):        # and it goes round: the last net is followed by the first
        c = netlock.claim("auto", 1, lab=f"lab{i}")
        seen.add(c.net)
        c.release()
    assert seen == set(range(1, 256 - 100 - 1)) & set(netlock.USERSPACE_NETS), sorted(set(netlock.USERSPACE_NETS) - seen)


def test_ten_labs_choosing_at_once_all_get_disjoint_nets(tmp_path):
    """(The rollout bench starts ten labs together: each waits its turn to choose, none gives up.)"""
    env = dict(os.environ, HIL_LOCK_DIR=str(tmp_path / "locks"))
    procs = [subprocess.Popen([sys.executable, "-c", HOLD, "auto", "1", f"lab{i}"], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=env) for i in range(10)]
    try:
        nets = [p.stdout.readline().strip() for p in procs]
        assert all(n.isdigit() for n in nets), [(n, p.stderr.read() if p.poll() is not None else "") for n, p in zip(nets, procs)]
        blocks = [set(netlock.userspace_blocks(int(n), 1)) for n in nets]
        assert sum(map(len, blocks)) == len(set().union(*blocks)), nets
    finally:
        for p in procs:
            p.kill()
            p.wait(10)


def test_a_fixed_net_another_lab_holds_is_refused_naming_that_lab(locks):
    holder, net = locks(40, 1, "demo")
    with pytest.raises(netlock.NetTaken) as err:
        netlock.claim(40, 1, lab="suite")
    text = str(err.value)
    assert "lab 'suite' cannot have net 40" in text and f"lab 'demo' (pid {holder.pid}, state /srv/demo)" in text, text
    assert "127.40.0.0/16" in text and "net: auto" in text, text
    # a net that shares one block with it is refused too: net 30's public relays (127.80) are net 40's WAN side
    with pytest.raises(netlock.NetTaken, match=r"127\.80\.0\.0/16 is held by lab 'demo'"):
        netlock.claim(30, 1, lab="suite")


def test_a_lock_goes_with_its_holder_even_when_killed(locks):
    holder, net = locks(40, 1, "doomed")
    holder.send_signal(signal.SIGKILL)
    holder.wait(10)
    claim = netlock.claim(40, 1, lab="next")
    assert claim.net == 40
    claim.release()


def test_a_block_with_sockets_of_another_program_counts_as_taken_and_names_it(locks):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as other:
        other.bind(("127.45.0.9", 0))       # net 45's site LAN, held by no lab: some other program
        with pytest.raises(netlock.NetTaken, match=rf"127\.45\.0\.0/16 has sockets bound by pid {os.getpid()}: "):
            netlock.claim(45, 1, lab="suite")
        claim = netlock.claim("auto", 1, lab="suite")
        try:
            assert "127.45" not in claim.blocks
        finally:
            claim.release()


def test_netns_labs_take_their_own_nets(locks):
    _, net = locks("auto", 1, "ns-a")      # a userspace lab's locks do not keep a namespace lab from net 1
    claim = netlock.claim("auto", 1, backend="netns", lab="ns")
    other = netlock.claim("auto", 1, backend="netns", lab="ns2")
    try:
        assert claim.blocks == ["netns-1"] and other.blocks == ["netns-2"]
        with pytest.raises(netlock.NetTaken, match="netns-1 is held by lab 'ns'"):
            netlock.claim(1, 1, backend="netns", lab="ns3")
    finally:
        claim.release()
        other.release()


def test_lab_file_takes_auto_or_nets_whose_address_plan_fits(tmp_path):
    """Userspace labs take nets up to 150 while phones (127.(net+100+k)) stay below 127.255; netns labs 1-60."""
    from hil import labfile
    from soundpoint.yamlfile import FileError

    def load(net: int | str | None, backend: str = "userspace") -> labfile.LabFile:
        spec = dict(lab_spec("n", phones=1), backend=backend)
        if net is None:
            del spec["net"]
        else:
            spec["net"] = net
        path = tmp_path / "lab.yml"
        path.write_text(yaml.safe_dump(spec))
        return labfile.load(path)

    assert load(None).net == "auto" and load("auto").net == "auto"
    assert load(96).net == 96 and load(150).net == 150
    assert load(60, "netns").net == 60
    with pytest.raises(FileError, match=r"lab.yml:\d+: net: backend netns: net 61 is above 60"):
        load(61, "netns")
    with pytest.raises(FileError, match="net"):
        load(151)
    with pytest.raises(FileError, match="net"):
        load("any")


@pytest.mark.lab
@pytest.mark.timeout(180)
def test_two_demo_labs_run_side_by_side_and_a_third_on_a_held_net_is_refused(tmp_path):
    """`hil up` twice at once on the demo's own lab file (no `net`, collector addresses `auto`): both come up on
    disjoint addresses with collectors of their own; a lab file naming one of their nets is refused (exit 3) with the
    holder's name and pid, and nothing of it runs."""
    demo = ROOT / "hil/labs/demo-wire.yml"
    assert "net" not in yaml.safe_load(demo.read_text())
    ups = {name: subprocess.Popen([BIN / "hil", "up", str(demo), "--state-dir", str(tmp_path / name),
                                   "--inventory-out", str(tmp_path / f"{name}.inventory.yml"), "--ready-timeout", "60"],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
           for name in ("left", "right")}
    try:
        for name, proc in ups.items():
            out, err = proc.communicate(timeout=120)
            assert proc.returncode == 0, (name, out, err)
        nets = {name: json.loads((tmp_path / name / "control.json").read_text())["net"] for name in ups}
        assert not set(netlock.userspace_blocks(nets["left"], 1)) & set(netlock.userspace_blocks(nets["right"], 1)), nets
        collectors = {name: yaml.safe_load((tmp_path / f"{name}.inventory.yml").read_text())["sites"][0]["collector"]
                      for name in ups}
        assert collectors["left"]["syslog"] != collectors["right"]["syslog"], collectors
        assert collectors["left"]["events"] != collectors["right"]["events"], collectors
        pid = json.loads((tmp_path / "left" / "control.json").read_text())["pid"]
        third_file = tmp_path / "third.yml"
        third_file.write_text(yaml.safe_dump(dict(lab_spec("third", phones=1), net=nets["left"])))
        third = subprocess.run([BIN / "hil", "up", str(third_file), "--state-dir", str(tmp_path / "third"),
                                "--ready-timeout", "20"], capture_output=True, text=True, timeout=60)
        assert third.returncode == 3, third
        assert f"cannot have net {nets['left']}" in third.stderr and f"(pid {pid}" in third.stderr, third.stderr
        assert not (tmp_path / "third" / "control.json").exists()
        for name in ups:      # both still serve their phones
            status = json.loads(subprocess.run([BIN / "hil", "status", "--json", "--state-dir", str(tmp_path / name)],
                                               capture_output=True, text=True, timeout=30).stdout)
            assert all(p["registrations"][0]["working_server"] == 1 for p in status["phones"]), (name, status["phones"])
    finally:
        for name in ("left", "right", "third"):
            subprocess.run([BIN / "hil", "down", "--state-dir", str(tmp_path / name)], capture_output=True, timeout=60)
    wait_until(lambda: not any((tmp_path / n / "control.json").exists() for n in ups), 30, "both labs down")
