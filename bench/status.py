"""`fleet status` at fleet scale: 50,000 phones on 20 sites (issue 22).

Prints, each the median of several runs:
  - `fleet status --json` read in process, against a raw pipelined HGETALL of the same hashes (target: <= 2x),
    and how long Redis is busy with it (HVALS of each site's rows hash);
  - `fleet status --json` as a whole command, interpreter start included (target: <= 0.5 s);
  - `fleet status --json --site S` for one site (2,500 phones by default) as a whole command (target: <= 0.2 s);
  - `fleet status --site S` (the table) as a whole command, for information;
  - a bare interpreter start (`python -c pass`), the floor under every whole-command figure.
The whole commands run through subprocess, as a user runs them. Figures on a busy machine are high: compare
them with the bare interpreter's line printed beside them.

Run: .venv/bin/python bench/status.py [--phones 50000] [--sites 20] [--runs 7] [--quick]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import redis

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from fleet.state.observe import Observation  # noqa: E402
from fleet.state.store import Keys, Store  # noqa: E402
from soundpoint.redisboot import start_private  # noqa: E402

TARGET_ALL_S, TARGET_SITE_S, TARGET_RATIO = 0.5, 0.2, 2.0


def populate(store: Store, phones: int, sites: int) -> list[str]:
    """`phones` phones spread evenly over `sites` sites, each observed registered on both servers; the site names."""
    per_site = -(-phones // sites)
    names = [f"site{s:02d}" for s in range(sites)]
    now = time.time()
    for start in range(0, phones, 1000):
        for s in range(start // per_site, (min(start + 1000, phones) - 1) // per_site + 1):
            lo, hi = max(start, s * per_site), min(start + 1000, phones, (s + 1) * per_site)
            rows = [{"mac": f"0004f2{i:06x}", "model": "VVX 410", "address": f"127.{100 + i // 62500}.{i // 250 % 250}.{i % 250 + 2}",
                     "servers": [{"index": 1, "register": True, "address": "voip.provider.example"},
                                 {"index": 2, "register": True, "address": "172.23.0.1"}]}
                    for i in range(lo, hi)]
            store.register_phones(names[s], rows)
            store.record_observations([Observation(mac=r["mac"], t=now, source="syslog", server=srv,
                                                   state="registered", address="x") for r in rows for srv in (1, 2)])
    return names


def median_s(fn: Callable[[], object], runs: int) -> float:
    return timed(fn, runs)[0]


def timed(fn: Callable[[], object], runs: int) -> tuple[float, float]:
    """Median wall time of `fn`, and the median CPU time of the processes it ran (user + system): on a busy
    machine the wall time waits for a core, the CPU time much less."""
    times, cpus = [], []
    for _ in range(runs):
        r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
        r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpus.append(r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime)
    return statistics.median(times), statistics.median(cpus)


def command(args: list[str], env: dict, expect: int | None) -> Callable[[], None]:
    """A whole command run as a user runs it, its output read through a pipe. The check that it printed the
    expected number of phones (--json) decodes tens of MB: done once, outside the timed runs."""
    if expect is not None:
        out = subprocess.run(args, env=env, capture_output=True, check=True).stdout
        if len(json.loads(out)) != expect:
            raise SystemExit(f"{' '.join(args[1:])}: {len(json.loads(out))} phones, expected {expect}")

    def run() -> None:
        subprocess.run(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, check=True)
    return run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--phones", type=int, default=50_000)
    ap.add_argument("--sites", type=int, default=20)
    ap.add_argument("--runs", type=int, default=7, help="runs per figure (the median is printed)")
    ap.add_argument("--quick", action="store_true", help="3 runs per figure, no table command")
    args = ap.parse_args()
    runs = 3 if args.quick else args.runs
    url, proc = start_private()
    try:
        store = Store(url)
        t0 = time.perf_counter()
        names = populate(store, args.phones, args.sites)
        print(f"phones in store:                          {args.phones} on {args.sites} sites "
              f"(stored in {time.perf_counter() - t0:.1f} s)")
        raw_client = redis.Redis.from_url(url, decode_responses=True)
        macs = sorted(raw_client.smembers(Keys.PHONES))   # the baseline: a naive client that knows the key names

        def raw() -> int:
            pipe = raw_client.pipeline(transaction=False)
            for m in macs:
                pipe.hgetall(Keys.phone(m))
            return len(pipe.execute())

        o = median_s(lambda: store.status_json(), runs)
        r = median_s(raw, runs)
        print(f"status --json in process:                 {o * 1000:.0f} ms (median of {runs})")
        print(f"raw pipelined HGETALL:                    {r * 1000:.0f} ms")
        print(f"ratio:                                    {o / r:.2f}x  (target <= {TARGET_RATIO:g}x)")
        def commandstats() -> dict[str, dict]:
            return {k: v for k, v in raw_client.info("commandstats").items() if k in ("cmdstat_hvals", "cmdstat_sort")}

        before = commandstats()
        store.status_json()
        after = commandstats()
        hvals, sort = ({f: after.get(k, {}).get(f, 0) - before.get(k, {}).get(f, 0) for f in ("calls", "usec")}
                       for k in ("cmdstat_hvals", "cmdstat_sort"))
        hvals["usec_per_call"] = hvals["usec"] / max(1, hvals["calls"])
        sort = sort if sort["calls"] else {}
        fallback = f"; SORT ... GET (the fallback) {sort.get('usec', 0) / 1000:.0f} ms" if sort else ""
        print(f"Redis busy per read:                      {hvals.get('usec', 0) / 1000:.0f} ms in all, HVALS of "
              f"{hvals.get('calls', 0)} sites' rows at {hvals.get('usec_per_call', 0) / 1000:.1f} ms each{fallback} "
              f"(another client waits one call at most)")

        env = dict(os.environ, FLEET_REDIS_URL=url)
        fleet = str(Path(sys.executable).parent / "fleet")
        site, in_site = names[0], raw_client.scard(Keys.site_phones(names[0]))
        bare, bare_cpu = timed(command([sys.executable, "-c", "pass"], env, None), runs)
        t_all, c_all = timed(command([fleet, "status", "--json"], env, args.phones), runs)
        t_site, c_site = timed(command([fleet, "status", "--json", "--site", site], env, in_site), runs)
        try:
            load = f"{os.getloadavg()[0]:.1f}"
        except OSError:
            load = "?"
        print(f"load average {load} on {os.cpu_count()} cores; each command's own CPU time in brackets")
        print(f"bare interpreter start (python -c pass):  {bare * 1000:.0f} ms  [cpu {bare_cpu * 1000:.0f} ms]")
        print(f"fleet status --json (whole command):      {t_all * 1000:.0f} ms  [cpu {c_all * 1000:.0f} ms]  "
              f"(target <= {TARGET_ALL_S * 1000:.0f} ms)  {'ok' if t_all <= TARGET_ALL_S else 'OVER'}")
        print(f"fleet status --json --site ({in_site} phones): {t_site * 1000:.0f} ms  [cpu {c_site * 1000:.0f} ms]  "
              f"(target <= {TARGET_SITE_S * 1000:.0f} ms)  {'ok' if t_site <= TARGET_SITE_S else 'OVER'}")
        if not args.quick:
            t_table = median_s(command([fleet, "status", "--wide", "--site", site], env, None), runs)
            print(f"fleet status --site (table, {in_site} phones): {t_table * 1000:.0f} ms  (no target)")
    finally:
        proc.terminate()


if __name__ == "__main__":
    main()
