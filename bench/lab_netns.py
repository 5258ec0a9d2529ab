"""Start-up and teardown of the namespace lab, and the registrations per second it sustains.

For each size: `hil up` (namespaces, real sshd/snmpd/Kamailio, phones) until every phone is registered,
then a window in which Kamailio's own counters (registrar:accepted_regs on the provider and every gateway)
give the REGISTERs per second accepted while every phone stays registered, then `hil down`.
Needs root and the namespace lab's packages (see tests/test_netns_lab.py).
Run: .venv/bin/python bench/lab_netns.py [--phones 50 500] [--window 20]
"""
from __future__ import annotations

import argparse
import glob
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests
import yaml

ROOT = Path(__file__).resolve().parent.parent
HIL = Path(sys.executable).parent / "hil"


def accepted(state: Path) -> int:
    from hil import kamailio     # after main() put the checkout on sys.path

    total = 0
    for sock in glob.glob(str(state / "kamailio-*" / "ctl.sock")):
        out = kamailio.kamcmd(Path(sock), "stats.get_statistics", "all").stdout
        total += sum(int(line.rsplit("=", 1)[1]) for line in out.splitlines() if line.startswith("registrar:accepted_regs"))
    return total


def run(phones: int, window: float, net: int) -> dict:
    sites = math.ceil(phones / 240)
    per = [phones // sites + (1 if k < phones % sites else 0) for k in range(sites)]
    spec = {"name": f"bench{phones}", "net": net, "backend": "netns", "http": False, "firmware_family": "uc-5.x",
            "timing": {"boot_time": 0.2, "boot_jitter": max(1.0, phones / 250), "retry_interval": 5,
                       "log_upload_period": 0, "dns_ttl": 30, "test_speed": True},
            "sites": [{"name": f"s{k}", "phones": {"count": n, "models": ["SoundPoint IP 650"]},
                       "servers": [{"address": "provider", "expires": 20, "overlap": 10},
                                   {"address": "gateway", "expires": 20, "overlap": 10}],
                       "collector": {"syslog": "127.0.0.1:9", "events": "127.0.0.1:9"}} for k, n in enumerate(per)]}
    tmp = Path(tempfile.mkdtemp(prefix="lab-netns-bench-"))
    (tmp / "lab.yml").write_text(yaml.safe_dump(spec))
    state = tmp / "state"
    t0 = time.monotonic()
    subprocess.run([HIL, "up", str(tmp / "lab.yml"), "--state-dir", str(state), "--ready-timeout", "300"], check=True)
    t_up = time.monotonic() - t0
    try:
        url = json.loads((state / "control.json").read_text())["url"]
        n0, t1 = accepted(state), time.monotonic()
        time.sleep(window)   # the measurement window, not a wait for a condition
        n1, t2 = accepted(state), time.monotonic()
        status = requests.get(url + "/status", timeout=60).json()
        registered = sum(1 for p in status["phones"] if p["registrations"] and p["registrations"][0]["working_server"] == 1)
    finally:
        t3 = time.monotonic()
        subprocess.run([HIL, "down", "--state-dir", str(state)], check=False, capture_output=True)
        t_down = time.monotonic() - t3
    return {"phones": phones, "sites": sites, "up_s": round(t_up, 2), "down_s": round(t_down, 2),
            "registers_per_s": round((n1 - n0) / (t2 - t1), 1), "on_provider_after_window": registered}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--phones", type=int, nargs="+", default=[50, 500])
    ap.add_argument("--window", type=float, default=20.0)
    ap.add_argument("--net", type=int, default=45)
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("skipped: the namespace lab needs root")
        return
    sys.path.insert(0, str(ROOT))
    from hil.netns.daemons import missing_tools

    if missing_tools():
        print(f"skipped: missing Debian packages {' '.join(missing_tools())}")
        return
    for n in args.phones:
        r = run(n, args.window, args.net)
        print(f"{r['phones']:>5} phones ({r['sites']} sites): up {r['up_s']:.2f} s, down {r['down_s']:.2f} s, "
              f"{r['registers_per_s']:.1f} REGISTER/s accepted by Kamailio, "
              f"{r['on_provider_after_window']}/{r['phones']} on the provider after the window", flush=True)


if __name__ == "__main__":
    main()
