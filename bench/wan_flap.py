"""The shipped 10 s / 10 s flap (playbooks/wan-flap.yml) on the demo-wire lab, against the lab's ground truth.

Usage: .venv/bin/python bench/wan_flap.py [--phones N]    (about 2.5 minutes; a lab on a free net, its own Redis)
Prints each cut's planned and held time, and per phone the report's counts beside the lab's ground truth over the
same window (registrations lost, REGISTERs sent per server, seconds registered nowhere), its time back on server 1
after the last restore, and both bounds: the flap recovery bound the report holds it to, and the single-outage
bound over the last cut alone (which a phone whose backoff grew over the whole flap can exceed).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from fleet.config import inventory
from fleet.phoneconf import predict
from hil.groundtruth import window_counts
from hil.harness import Harness

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def main(phones: int = 4) -> int:
    spec = yaml.safe_load((ROOT / "hil/labs/demo-wire.yml").read_text())
    spec.pop("net", None)
    spec["name"] = "wan-flap-bench"
    spec["sites"][0]["phones"]["count"] = phones
    with tempfile.TemporaryDirectory() as tmp, Harness(Path(tmp)) as h:
        url = h.redis()
        lab = h.lab(spec)
        h.worker(lab.inventory, "hq")
        t0 = time.time()
        res = subprocess.run([BIN / "fleet", "experiment", "run", str(ROOT / "playbooks/wan-flap.yml"), "--inventory",
                              str(lab.inventory), "--report-dir", str(Path(tmp) / "reports"), "--json"],
                             env=dict(os.environ, FLEET_REDIS_URL=url), capture_output=True, text=True, timeout=900)
        doc = json.loads(res.stdout)
        print(f"exit {res.returncode}, passed {doc['passed']}, {time.time() - t0:.1f} s; errors: {doc['errors']}")
        flap = doc["flaps"][0]
        print("cut   planned down s   held s")
        for planned, cut in zip(flap["plan"]["cycles"], flap["cuts"]):
            print(f"{cut['index']:>3}   {planned['down_s']:>14.3f}   {cut['end'] - cut['start']:.2f}")
        truth = lab.status()["ground_truth"]["phones"]
        inv = inventory.load(str(lab.inventory))
        site = inv.site("hq")
        last = flap["cuts"][-1]
        for p in flap["phones"]:
            real = window_counts(truth[p["mac"]], flap["cuts"][0]["start"], flap["finished"])
            phone = next(x for x in site.phones if x.mac == p["mac"])
            single = predict.recovery_bound(inv.effective_params(site, phone), family=phone.family.name,
                                            outage_s=last["end"] - last["start"]).seconds
            print(f"{p['mac']} {phone.family.name}: lost {p['registrations_lost']} (truth {real['registrations_lost']}); "
                  f"sent {p['registers_sent']} (truth {real['registers_sent']}); nowhere {p['registered_nowhere_s']} s "
                  f"(truth {real['registered_nowhere_s']}); back on 1 after {p['back_on_1_s']} s, flap bound "
                  f"{p['bound_s']} s, single-outage bound over the last cut {single} s")
        print("WAN up at the end:", lab.status()["sites"][0]["router"]["wan_state"]["admin_up"])
        return 0 if doc["passed"] else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--phones", type=int, default=4, help="phones on the demo-wire lab's one site (default 4)")
    sys.exit(main(parser.parse_args().phones))
