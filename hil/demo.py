"""The main job, end to end: the virtual lab, a private Redis and a `fleet worker`, then the WAN-outage playbook.

Lives beside the lab, not in `fleet/`: the controller never knows it is talking to a lab. The start-up and the
clean-up are `hil.harness` (the tests and benchmarks use the same); the worker is waited for until it answers
and its collector listens, not for a fixed time.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from fleet.redact import redact_url

from .harness import BIN, Harness

ROOT = Path(__file__).resolve().parent.parent
LAB_FILE = ROOT / "hil/labs/one-site.yml"


def main() -> int:
    work = Path(tempfile.mkdtemp(prefix="fleet-demo-"))
    report_dir = ROOT / "reports"
    try:
        with Harness(work) as h:
            url = h.redis()
            env = dict(os.environ, FLEET_REDIS_URL=url)
            print(f"demo: private Redis at {redact_url(url)}", flush=True)
            lab = h.lab(LAB_FILE, ready_timeout=120, timeout=None)
            h.worker(lab.inventory, "hq")
            rc = subprocess.run([BIN / "fleet", "experiment", "run", str(ROOT / "playbooks/wan-outage-fallback.yml"),
                                 "--inventory", str(lab.inventory), "--report-dir", str(report_dir)], env=env).returncode
            subprocess.run([BIN / "fleet", "status"], env=env)
            return rc
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
