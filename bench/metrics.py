"""A collector's /metrics scrape over 10,000 phones (issue 20: under 1 s on one core).

Rows are written straight into a private Redis (the store's own register/observation path, as a collector
stores them: two servers per phone, a third of the phones on fallback), with one site's evidence report,
histograms and a running rollout over every phone. Then the exporter serves /metrics over HTTP and the bench
times full scrapes (read from Redis, families built, text exposition, HTTP) with this process and redis-server
pinned to one CPU core. Prints the median and the worst of the runs, and the number of samples.
Run: .venv/bin/python bench/metrics.py [--phones N] [--runs R]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from fleet.config.inventory import Site  # noqa: E402
from fleet.evidence.metrics.exporter import start_exporters  # noqa: E402
from fleet.state import durations  # noqa: E402
from fleet.state.observe import Observation  # noqa: E402
from fleet.state.store import RolloutStore, Store  # noqa: E402
from soundpoint.redisboot import free_port, start_private  # noqa: E402

GOAL_S = 1.0


def fill(store: Store, site: str, phones: int) -> None:
    now = time.time()
    macs = [f"0004f2{i:06x}" for i in range(phones)]
    for start in range(0, phones, 1000):
        chunk = macs[start:start + 1000]
        store.register_phones(site, [{"mac": m, "model": "VVX 410", "address": f"10.1.{i // 250}.{i % 250 + 2}",
                                      "servers": [{"index": 1, "register": True, "address": "voip.provider.example"},
                                                  {"index": 2, "register": True, "address": "10.1.0.1"}]}
                                     for i, m in enumerate(chunk, start)])
        obs = []
        for i, m in enumerate(chunk, start):
            fallback = i % 3 == 0
            obs += [Observation(mac=m, t=now, source="wire", server=1, state="unregistered" if fallback else "registered",
                                expires=None if fallback else 3600),
                    Observation(mac=m, t=now, source="wire", server=2, state="registered", expires=3600)]
        store.record_observations(obs)
    store.set_site_evidence(site, [], [{"source": "router capture", "running": True, "error": "", "since": None,
                                        "foreign": {"10.1.9.9": 12}, "dropped": {"clock_ahead": 3}}])
    durations.record(store, site, "experiment", "bench-1", {"failover": [i % 40 for i in range(phones)],
                                                           "recovery": [i % 70 for i in range(phones)]})
    RolloutStore(store).create("bench-rollout", "fw.yml", {"phones": [{"mac": m} for m in macs],
                                                          "waves": [macs[:100], macs[100:]]}, {"status": "running"})


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--phones", type=int, default=10_000)
    ap.add_argument("--runs", type=int, default=7)
    args = ap.parse_args()
    cpu = min(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {cpu})
    url, proc = start_private()
    os.sched_setaffinity(proc.pid, {cpu})          # Redis on the same single core as the exporter
    exporters = []
    try:
        store = Store(url)
        fill(store, "hq", args.phones)
        address = f"127.0.0.1:{free_port()}"
        site = Site.model_validate({"name": "hq", "gateway": "10.1.0.1", "boot_server": {"url": "http://10.1.0.3/"},
                                    "collector": {"metrics": address}})
        exporters = start_exporters(store, [site])
        times, size, samples = [], 0, 0
        for _ in range(args.runs):
            t0 = time.perf_counter()
            text = requests.get(f"http://{address}/metrics", timeout=60).text
            times.append(time.perf_counter() - t0)
            size = len(text)
            samples = sum(1 for line in text.splitlines() if line and not line.startswith("#"))
        median, worst = statistics.median(times), max(times)
        print(f"scrape of {args.phones} phones on one core (CPU {cpu}): median {median:.3f} s, worst {worst:.3f} s "
              f"over {args.runs} runs; {samples} samples, {size / 1e6:.1f} MB of text (goal: under {GOAL_S:g} s)")
        if median >= GOAL_S:
            sys.exit(1)
    finally:
        for e in exporters:
            e.stop()
        proc.terminate()
        proc.wait(10)


if __name__ == "__main__":
    main()
