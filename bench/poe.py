"""What a PoE power cycle costs on the virtual lab: the snmp-poe driver's read, checked set and refused set.

Usage: .venv/bin/python bench/poe.py [--phones 4] [--rounds 5]
Starts a userspace lab (a free net) with one site, then prints the median and maximum seconds of:
  port_state            a GET of pethPsePortAdminEnable and pethPsePortDetectionStatus (SNMPv3 authPriv);
  set_power             the GET before, the SET, and the read-back (three requests);
  refused, unknown port the GET that refuses it (noSuchInstance), no SET sent;
  refused, wrong v3 key the GET the switch answers with a report (usmStatsWrongDigests): a refused login, no SET;
and the time from a port turned on to its phone registered again (boot_time of the lab file, plus provisioning).
Each request builds its own pysnmp engine (fleet.drivers.snmp_session): that, not the network, is most of it.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path


def _timed(fn) -> float:
    t0 = time.perf_counter()
    try:
        fn()
    except Exception:       # a refusal is what is being timed
        pass
    return time.perf_counter() - t0


def main() -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from conftest import lab_spec
    from fleet.config import inventory
    from fleet.config.inventory import Credentials, PoePort
    from fleet.drivers import switch as switches
    from hil import harness

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--phones", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        lab = harness.start_lab(Path(d), lab_spec("bench-poe", phones=args.phones))
        try:
            inv = inventory.load(lab.inventory)
            site = inv.sites[0]
            sw = site.switches[0]
            drv = switches.connect(sw, inventory.Secrets(inv).credentials(sw.credentials))
            bad = switches.connect(sw, Credentials(username="fleet", password="wrong-auth-key", priv_password="wrong-priv"))
            phone = site.phones[0]
            rows: dict[str, list[float]] = {k: [] for k in ("port_state", "set_power", "refused, unknown port",
                                                            "refused, wrong v3 key", "on -> registered")}
            for _ in range(args.rounds):
                rows["port_state"].append(_timed(lambda: drv.port_state(phone.poe)))
                rows["refused, unknown port"].append(_timed(lambda: drv.set_power(PoePort(switch=sw.name, port="1.99"), False)))
                rows["refused, wrong v3 key"].append(_timed(lambda: bad.set_power(phone.poe, False)))
                rows["set_power"].append(_timed(lambda: drv.set_power(phone.poe, False)))
                t0 = time.perf_counter()
                rows["set_power"].append(_timed(lambda: drv.set_power(phone.poe, True)))
                harness.wait_for(lambda: any(p["mac"] == phone.mac and p["booted"] and all(
                    s["state"] == "registered" for r in p["registrations"] for s in r["servers"] if s["register"])
                    for p in lab.status()["phones"]), 60, "the phone registered again")
                rows["on -> registered"].append(time.perf_counter() - t0)
            print(f"lab net {lab.spec.get('net', 'auto')}, {args.phones} phones, {args.rounds} rounds; "
                  f"switch timeout {sw.timeout:g} s, boot_time {lab.spec['timing']['boot_time']} s")
            for name, values in rows.items():
                print(f"{name:24s} median {statistics.median(values):6.3f} s   max {max(values):6.3f} s   (n={len(values)})")
            print(f"SETs the switch took past authentication: {lab.status()['sites'][0]['switch']['sets']} "
                  f"(expected {2 * args.rounds}: the refusals sent none)")
        finally:
            lab.down()


if __name__ == "__main__":
    main()
