"""The main job, end to end: the virtual lab, a private Redis and a `fleet worker`, then the WAN-outage playbook.

Lives beside the lab, not in `fleet/`: the controller never knows it is talking to a lab. Cleans up after itself.
"""
from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from fleet.redact import redact_url
from fleet.redisboot import start_private

from . import demo_truth

ROOT = Path(__file__).resolve().parent.parent


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m hil.demo", description=__doc__.split("\n")[0])
    ap.add_argument("--lab", type=Path, default=ROOT / "hil/labs/one-site.yml",
                    help="the lab file (hil/labs/demo-wire.yml: no syslog line, the router's capture; "
                         "hil/labs/demo-hep.yml: no syslog line, a Kamailio gateway's HEP)")
    args = ap.parse_args(argv)
    if not args.lab.is_file():
        ap.error(f"--lab {args.lab}: no such file")
    work = Path(tempfile.mkdtemp(prefix="fleet-demo-"))
    report_dir = ROOT / "reports"
    procs: list[subprocess.Popen] = []
    lab_state = work / "lab"
    url, redis_proc = start_private(work / "redis")
    procs.append(redis_proc)
    env = dict(os.environ, FLEET_REDIS_URL=url)
    bindir = Path(sys.executable).parent
    print(f"demo: private Redis at {redact_url(url)}", flush=True)
    try:
        inv = work / "inventory.yml"
        up = subprocess.run([bindir / "hil", "up", str(args.lab), "--state-dir", str(lab_state),
                             "--inventory-out", str(inv)], env=env)
        if up.returncode:
            return up.returncode      # `hil up` said why (a bad lab file: its line and field, exit 2)
        worker_log = open(work / "worker.log", "w")
        procs.append(subprocess.Popen([bindir / "fleet", "worker", "--inventory", str(inv), "--site", "hq"],
                                      env=env, stdout=worker_log, stderr=subprocess.STDOUT, start_new_session=True))
        time.sleep(3)
        started = time.time()
        playbook = ROOT / "playbooks/wan-outage-fallback.yml"
        rc = subprocess.run([bindir / "fleet", "experiment", "run", str(playbook),
                             "--inventory", str(inv), "--report-dir", str(report_dir)], env=env).returncode
        subprocess.run([bindir / "fleet", "status"], env=env)
        # the lab's ground truth beside the measured times (only the demo, which owns the lab, can see both)
        truth = subprocess.run([bindir / "hil", "status", "--state-dir", str(lab_state), "--json"], env=env,
                               capture_output=True, text=True)
        agree = truth.returncode == 0 and demo_truth.check(report_dir, truth.stdout, playbook, since=started)
        return rc or (0 if agree else 1)
    finally:
        if (lab_state / "control.json").exists():
            subprocess.run([bindir / "hil", "down", "--state-dir", str(lab_state)], env=env)
        for p in reversed(procs):
            try:
                os.killpg(p.pid, signal.SIGTERM)
                p.wait(10)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                p.kill()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
