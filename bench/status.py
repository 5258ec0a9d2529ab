"""`fleet status --json` over 10,000 phones in the store vs a raw pipelined Redis read of the same hashes.

Prints both times (median of several runs) and their ratio. Target: ratio <= 2.
Run: .venv/bin/python bench/status.py [--phones N]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import redis

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from fleet.state.observe import Observation  # noqa: E402
from soundpoint.redisboot import start_private  # noqa: E402
from fleet.state.store import Keys, Store  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--phones", type=int, default=10_000)
    ap.add_argument("--runs", type=int, default=7)
    args = ap.parse_args()
    url, proc = start_private()
    try:
        store = Store(url)
        now = time.time()
        for start in range(0, args.phones, 1000):
            rows = [{"mac": f"0004f2{i:06x}", "model": "VVX 410", "address": f"127.100.{i // 250}.{i % 250 + 2}",
                     "servers": [{"index": 1, "register": True, "address": "voip.provider.example"},
                                 {"index": 2, "register": True, "address": "172.23.0.1"}]}
                    for i in range(start, min(start + 1000, args.phones))]
            store.register_phones(f"site{start // 5000}", rows)
            store.record_observations([Observation(mac=r["mac"], t=now, source="syslog", server=s, state="registered",
                                                   address="x") for r in rows for s in (1, 2)])
        raw_client = redis.Redis.from_url(url, decode_responses=True)
        macs = sorted(raw_client.smembers(Keys.PHONES))   # the baseline: a naive client that knows the key names

        def ours() -> int:
            return len(store.status_json())

        def raw() -> int:
            pipe = raw_client.pipeline(transaction=False)
            for m in macs:
                pipe.hgetall(Keys.phone(m))
            return len(pipe.execute())

        t_ours, t_raw = [], []
        for _ in range(args.runs):
            t0 = time.perf_counter(); ours(); t_ours.append(time.perf_counter() - t0)
            t0 = time.perf_counter(); raw(); t_raw.append(time.perf_counter() - t0)
        env = dict(os.environ, FLEET_REDIS_URL=url)
        t0 = time.perf_counter()
        out = subprocess.run([Path(sys.executable).parent / "fleet", "status", "--json"], env=env, capture_output=True, check=True).stdout
        t_cli = time.perf_counter() - t0
        assert len(json.loads(out)) == args.phones
        o, r = statistics.median(t_ours), statistics.median(t_raw)
        print(f"phones in store:                  {args.phones}")
        print(f"fleet status --json (in process):  {o * 1000:.1f} ms (median of {args.runs})")
        print(f"raw pipelined HGETALL:             {r * 1000:.1f} ms")
        print(f"ratio:                             {o / r:.2f}x  (target <= 2x)")
        print(f"whole CLI incl. interpreter start: {t_cli * 1000:.0f} ms")
    finally:
        proc.terminate()


if __name__ == "__main__":
    main()
