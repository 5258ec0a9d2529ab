"""The main job, end to end: the virtual lab, a private Redis and a `fleet worker`, then the WAN-outage playbook.

By default on the evidence a real site has (hil/labs/demo-wire.yml): SIP on the wire, captured on the router, and
the phones' telephone notification events; the phones send no registration log line, which is the lab's own
invention (`--lab hil/labs/one-site.yml`, `make demo-syslog`, runs the demo with it).

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

import yaml

from . import demo_truth, labfile
from .harness import BIN, Harness

ROOT = Path(__file__).resolve().parent.parent
LAB_FILE = ROOT / "hil/labs/demo-wire.yml"        # `make demo`: a real site's evidence
SYSLOG_LAB_FILE = ROOT / "hil/labs/one-site.yml"  # `make demo-syslog`: the lab's registration log line as well


def evidence(lab_file: Path, inventory: Path, site: str) -> str:
    """One line saying what the demo's verdict rests on: the per-server sources the lab's inventory names, the
    phones' events, and whether the lab's invented registration log line is among them."""
    spec = labfile.load(lab_file)
    entry = next(s for s in yaml.safe_load(inventory.read_text())["sites"] if s["name"] == site)
    wire = [c if isinstance(c, str) else f"{c.get('kind')} {c.get('listen', '')}".strip() for c in entry.get("capture") or []]
    sources = [f"SIP on the wire ({', '.join(wire)})"] if wire else []
    if isinstance(entry.get("gateway"), dict):
        sources.append(f"the {entry['gateway']['platform']} gateway's registrar bindings")
    if spec.syslog_registration_line:
        sources.append("the lab's syslog registration line (no real phone sends it: `make demo` runs without it)")
    said = "evidence: " + " and ".join([", ".join(sources), "telephone notification events"] if sources
                                       else ["telephone notification events"])
    return said if spec.syslog_registration_line else f"{said}, as a real site has them; no registration log line"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m hil.demo", description=__doc__.split("\n")[0])
    ap.add_argument("--lab", type=Path, default=LAB_FILE,
                    help="the lab file (default hil/labs/demo-wire.yml: the router's capture and the phones' events; "
                         "hil/labs/demo-hep.yml: a Kamailio gateway's HEP; hil/labs/one-site.yml: with the lab's "
                         "syslog registration line)")
    ap.add_argument("--report-dir", type=Path, default=ROOT / "reports", help="where the report goes")
    args = ap.parse_args(argv)
    if not args.lab.is_file():
        ap.error(f"--lab {args.lab}: no such file")
    work = Path(tempfile.mkdtemp(prefix="fleet-demo-"))
    report_dir = args.report_dir
    try:
        with Harness(work) as h:
            url = h.redis()
            env = dict(os.environ, FLEET_REDIS_URL=url)
            print(f"demo: private Redis at {redact_url(url)}", flush=True)
            try:
                lab = h.lab(args.lab, ready_timeout=120, timeout=None)
            except subprocess.CalledProcessError as exc:
                return exc.returncode      # `hil up` said why (a bad lab file: its line and field, exit 2)
            print(f"demo: {evidence(args.lab, lab.inventory, 'hq')}", flush=True)
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
