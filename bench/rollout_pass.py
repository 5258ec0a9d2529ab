"""The rollout driver's own cost per pass, by the size of the rollout: no lab, a real private Redis.

A rollout of N phones in one wave is driven in passes: each pass reads what changed, decides (fleet.rollout.policy),
records its decisions and sends their tasks. What a pass costs bounds how fast the driver can react (a phone
verified frees its slot only when a pass sees it) and is most of the command's CPU. This bench builds a rollout's
records in Redis as they stand mid-way (40 % verified, `max_unavailable` phones per site verifying, the rest
pending), then runs passes through the driver's own `_decide` and `_carry_out` with the command line's own
per-phone line writer watching; in each pass one phone is seen registered, so the pass verifies it and dispatches the
next (a real Celery message to the site's queue, which nobody consumes). It prints ms and CPU ms per pass.

Run: .venv/bin/python bench/rollout_pass.py [--phones 1000 10000] [--passes 200]
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from fleet.rollout import policy  # noqa: E402
from fleet.rollout.driver import RolloutDriver  # noqa: E402
from fleet.rollout.progress import PhoneLines  # noqa: E402
from fleet.state.observe import Observation  # noqa: E402
from fleet.state.store import K, RolloutStore, Store  # noqa: E402
from fleet.worker.app import configure  # noqa: E402
from soundpoint.redisboot import start_private  # noqa: E402

SITES = 10


def build(store: Store, rid: str, phones: int, slots: int) -> tuple[RolloutDriver, dict, list[str]]:
    """The rollout's records mid-way, and a driver on them (its fields set as RolloutDriver.__init__ would)."""
    macs = [f"0004f3{i:06x}" for i in range(phones)]
    site_of = {m: f"s{i % SITES}" for i, m in enumerate(macs)}
    entries = [{"mac": m, "site": site_of[m], "params": {"reg.1.server.1.expires": "61"}, "config_hash": "x"}
               for m in macs]
    plan = {"phones": entries, "waves": [macs], "max_unavailable": {f"s{k}": slots for k in range(SITES)},
            "budget_total": 0}
    rs = RolloutStore(store)
    rs.create(rid, "bench", plan, {})
    store.register_phones("s0", [{"mac": m, "servers": [{"index": 1}, {"index": 2}]} for m in macs])
    now = time.time()
    busy = dict.fromkeys(site_of.values(), 0)
    with store.r.pipeline(transaction=False) as pipe:
        for i, m in enumerate(macs):
            if i < phones * 0.4:
                fields = {"state": "verified", "settled_at": now}
            elif busy[site_of[m]] < slots:
                busy[site_of[m]] += 1
                fields = {"state": "verifying", "dispatched_at": now, "reboot_at": now}
            else:
                continue
            pipe.hset(K.rollout_phone(rid, m), mapping=fields)
        pipe.execute()

    class Verify:
        registered_to = [1, 2]
        within = 600

    class Strategy:
        progress_deadline = 3600
        power_cycle_fallback = False

    class Playbook:
        verify, strategy, rollback = Verify, Strategy, True

    driver = RolloutDriver.__new__(RolloutDriver)
    driver.rid, driver.store, driver.rs, driver.pb = rid, store, rs, Playbook
    driver.plan, driver.site_of = plan, site_of
    driver._entries = {e["mac"]: e for e in entries}
    driver.limits = policy.Limits.of(plan, Playbook, 0)
    driver._downs, driver.say, driver.progress = {}, lambda s: None, lambda c: None
    driver._touched, driver._progress_due = None, 0.0     # absent before the change: harmless there
    lines = PhoneLines(plan, [1, 2])
    driver.watch = lambda records: lines.states(records)
    return driver, rs.phones(rid, macs), macs


def run(url: str, phones: int, passes: int, slots: int) -> tuple[float, float]:
    store = Store(url)
    rid = f"bench-pass-{phones}"
    driver, snapshot, macs = build(store, rid, phones, slots)
    verifying = [m for m in macs if snapshot[m].get("state") == "verifying"]
    wall = cpu = 0.0
    for i in range(passes):
        mac = verifying[i % len(verifying)]
        if snapshot[mac].get("state") != "verifying":
            continue
        t = time.time()
        store.record_observations([Observation(mac, t + 0.001, "syslog", server=s, state="registered") for s in (1, 2)])
        w0, c0 = time.perf_counter(), time.process_time()
        decided = driver._decide(0, macs, snapshot, {mac}, False, False)
        driver._carry_out(decided.dispatch, snapshot)
        wall += time.perf_counter() - w0
        cpu += time.process_time() - c0
        assert snapshot[mac]["state"] == "verified", snapshot[mac]
    return wall / passes * 1000, cpu / passes * 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--phones", type=int, nargs="+", default=[1000, 10000])
    ap.add_argument("--passes", type=int, default=200)
    ap.add_argument("--slots", type=int, default=25, help="max_unavailable per site (10 sites)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    url, proc = start_private(Path(tempfile.mkdtemp(prefix="bench-pass-")) / "redis")
    try:
        configure(url)
        for n in args.phones:
            ms, cpu_ms = run(url, n, args.passes, args.slots)
            if args.json:
                print(json.dumps({"phones": n, "ms_per_pass": round(ms, 3), "cpu_ms_per_pass": round(cpu_ms, 3)}))
            else:
                print(f"{n:6d} phones: {ms:7.2f} ms per pass ({cpu_ms:.2f} ms CPU), one phone verified and one "
                      f"dispatched in each; {1000 / ms:.0f} passes/s at most")
    finally:
        proc.terminate()
        proc.wait(10)


if __name__ == "__main__":
    main()
