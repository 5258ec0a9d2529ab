"""The main job, end to end: the virtual lab, a private Redis and a `fleet worker`, then the WAN-outage playbook.

Lives beside the lab, not in `fleet/`: the controller never knows it is talking to a lab. The start-up and the
clean-up are `hil.harness` (the tests and benchmarks use the same); the worker is waited for until it answers
and its collector listens, not for a fixed time.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from soundpoint.redact import redact_url

from . import demo_truth
from .harness import BIN, Harness

ROOT = Path(__file__).resolve().parent.parent
LAB_FILE = ROOT / "hil/labs/one-site.yml"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m hil.demo", description=__doc__.split("\n")[0])
    ap.add_argument("--lab", type=Path, default=LAB_FILE,
                    help="the lab file (hil/labs/demo-wire.yml: no syslog line, the router's capture; "
                         "hil/labs/demo-hep.yml: no syslog line, a Kamailio gateway's HEP)")
    args = ap.parse_args(argv)
    if not args.lab.is_file():
        ap.error(f"--lab {args.lab}: no such file")
    work = Path(tempfile.mkdtemp(prefix="fleet-demo-"))
    report_dir = ROOT / "reports"
    try:
        with Harness(work) as h:
            url = h.redis()
            env = dict(os.environ, FLEET_REDIS_URL=url)
            print(f"demo: private Redis at {redact_url(url)}", flush=True)
            try:
                lab = h.lab(args.lab, ready_timeout=120, timeout=None)
            except subprocess.CalledProcessError as exc:
                return exc.returncode      # `hil up` said why (a bad lab file: its line and field, exit 2)
            h.worker(lab.inventory, "hq")
            started, playbook = time.time(), ROOT / "playbooks/wan-outage-fallback.yml"
            rc = subprocess.run([BIN / "fleet", "experiment", "run", str(playbook),
                                 "--inventory", str(lab.inventory), "--report-dir", str(report_dir)], env=env).returncode
            subprocess.run([BIN / "fleet", "status"], env=env)
            # the lab's ground truth beside the measured times (only the demo, which owns the lab, sees both)
            truth = lab.status()
            agree = demo_truth.check(report_dir, truth, playbook, since=started)
            ran = demo_truth.newest_report(report_dir, since=started)
            if ran is not None:      # and in the report's page: `fleet experiment report --ground-truth`
                kept = report_dir / ran["id"] / "ground-truth.json"
                kept.write_text(json.dumps(truth))
                subprocess.run([BIN / "fleet", "experiment", "report", str(kept.parent), "--ground-truth", str(kept)],
                               env=env)
            return rc or (0 if agree else 1)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
