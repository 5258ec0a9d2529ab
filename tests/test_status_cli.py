"""Issue 19: `fleet status` as an operator meets it: whole MACs at 80 columns (or --wide), a misspelt --site is bad
input (exit 2, with a suggestion), Ctrl-C on --live exits 130, and --json carries address and firmware.

Real Redis holding phones the way a collector leaves them (registered, observed, the collector's evidence report),
real `fleet status` processes.
"""
from __future__ import annotations

import json
import os
import pty
import select
import signal
import subprocess
import time
import uuid

from conftest import BIN, wait_until
from fleet.state.observe import Observation
from fleet.state.store import Store

SERVERS = [{"index": 1, "address": "sip-provider.voip.example.com:5060", "register": True},
           {"index": 2, "address": "192.168.100.2:5060", "register": True}]


ERROR = ("no HEP packet from the PBX at 127.0.0.1:9060 since the collector started: is capture_id 2001 and "
         "the auth key of its hep_server set on the PBX?")


def _site_with_phones(store: Store, n: int = 4) -> tuple[str, list[str]]:
    """A site whose phones share a long MAC prefix (one vendor's OUI and more): a cut MAC is no MAC at all."""
    site = f"s{uuid.uuid4().hex[:6]}"
    macs = [f"00040c00{uuid.uuid4().hex[:2]}{i:02x}" for i in range(n)]
    store.register_phones(site, [{"mac": m, "model": "SoundPoint IP 650", "address": f"192.168.100.{20 + i}",
                                  "firmware_version": "4.0.15", "servers": SERVERS} for i, m in enumerate(macs)])
    now = time.time()
    store.record_observations([Observation(m, now, "wire:eth0", server=s, state="registered",
                                           address=SERVERS[s - 1]["address"], code=200, expires=3600)
                               for m in macs for s in (1, 2)])
    store.set_site_evidence(site, [{"mac": m, "reg": 1, "server": 2, "reason": "not observable on the wire",
                                    "why": "registers over TLS (encrypted) to 192.168.100.2:5061"} for m in macs[:2]],
                            [{"source": "wire:eth0", "state": "running"},
                             {"source": "hep:udp:127.0.0.1:9060", "state": "failing", "since": now - 30, "error": ERROR}])
    return site, macs


def _env(redis_url: str, **extra: str) -> dict:
    return dict(os.environ, FLEET_REDIS_URL=redis_url, **extra)


def _status(redis_url: str, *args: str, columns: int = 80) -> subprocess.CompletedProcess:
    return subprocess.run([BIN / "fleet", "status", *args], capture_output=True, text=True, timeout=60,
                          env=_env(redis_url, COLUMNS=str(columns)))


def test_at_80_columns_every_mac_is_whole(redis_url):
    site, macs = _site_with_phones(Store(redis_url))
    res = _status(redis_url, "--site", site)
    assert res.returncode == 0, res.stderr
    assert all(len(line) <= 80 for line in res.stdout.splitlines()), res.stdout
    assert "…" not in res.stdout, res.stdout
    for mac in macs:
        assert mac in res.stdout, res.stdout
    # the failing source's error, folded over lines but whole: every word of it is there
    why = "".join(line.split("│")[4] for line in res.stdout.splitlines() if line.count("│") == 5)   # its 4 columns
    assert "".join(ERROR.split()) in "".join(why.split()), res.stdout


def test_wide_keeps_each_phone_on_one_line(redis_url):
    site, macs = _site_with_phones(Store(redis_url))
    res = _status(redis_url, "--site", site, "--wide")
    assert res.returncode == 0, res.stderr
    for mac in macs:
        [line] = [ln for ln in res.stdout.splitlines() if mac in ln]
        assert "sip-provider" not in line and "SoundPoint IP 650" in line and "1:up wire:eth0" in line, line


def test_a_misspelt_site_is_bad_input_with_a_suggestion(redis_url):
    site, _ = _site_with_phones(Store(redis_url))
    typo = site[:-1] + ("x" if site[-1] != "x" else "y")
    res = _status(redis_url, "--site", typo)
    assert res.returncode == 2, (res.returncode, res.stdout, res.stderr)
    assert f"no site '{typo}'" in res.stderr and f"(did you mean {site}?)" in res.stderr, res.stderr
    assert res.stdout == ""
    assert _status(redis_url, "--site", typo, "--json").returncode == 2


def test_json_carries_address_and_firmware(redis_url):
    store = Store(redis_url)
    site, macs = _site_with_phones(store)
    store.set_phone_info({macs[0]: {"firmware": "4.0.15.1009"}})
    res = _status(redis_url, "--site", site, "--json")
    rows = {r["mac"]: r for r in json.loads(res.stdout)}
    assert rows[macs[0]]["firmware"] == "4.0.15.1009" and rows[macs[0]]["firmware_from"] == "phone"
    assert rows[macs[1]]["firmware"] == "4.0.15" and rows[macs[1]]["firmware_from"] == "inventory"
    assert [rows[m]["address"] for m in macs] == [f"192.168.100.{20 + i}" for i in range(len(macs))]


def test_ctrl_c_ends_live_with_130(redis_url):
    """On a terminal (a pty: Live draws only there), once the table is drawn, Ctrl-C (SIGINT) ends it with 130."""
    site, macs = _site_with_phones(Store(redis_url), n=1)
    master, slave = pty.openpty()
    proc = subprocess.Popen([BIN / "fleet", "status", "--site", site, "--live"], stdout=slave, stderr=slave,
                            stdin=subprocess.DEVNULL, env=_env(redis_url, COLUMNS="160", LINES="40", TERM="xterm"))
    os.close(slave)
    seen = bytearray()
    try:
        def drawn() -> bool:
            if select.select([master], [], [], 0.1)[0]:
                try:
                    seen.extend(os.read(master, 65536))
                except OSError:     # the other end closed: the process ended
                    return True
            return macs[0].encode() in seen or proc.poll() is not None
        wait_until(drawn, 30, "the live table", state=lambda: (bytes(seen), proc.poll()))
        assert proc.poll() is None, bytes(seen)
        proc.send_signal(signal.SIGINT)
        # keep reading, as a terminal does: a full pty would block the table's last writes and so its exit
        wait_until(lambda: drawn() and proc.poll() is not None, 30, "fleet status --live to end on SIGINT",
                   state=lambda: (bytes(seen)[-500:], proc.poll()))
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(master)
    assert proc.returncode == 130, (proc.returncode, bytes(seen)[-2000:])
