"""Live poll of 1,000 virtual phones (REST lineInfo) vs a sequential requests loop, and detection latency.

The lab runs in its own process (`hil up`); each phone's web server takes
--latency seconds to answer (embedded phone web servers are slow; 50 ms is
kind to them). Prints both poll times and their ratio (target >= 20x), then
cuts the WAN and polls round after round: the time from each phone's real
change of working server (the lab's ground truth) to the poll that saw it,
p50 and p99 (target p99 <= 1 s).
Run: .venv/bin/python bench/poll.py [--phones 1000] [--latency 0.05]
"""
from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from fleet.config import inventory  # noqa: E402
from fleet.drivers import router as routers  # noqa: E402
from fleet.drivers.router import Outage  # noqa: E402
from fleet.evidence.sources.poller import Poller  # noqa: E402
from soundpoint.redisboot import free_port  # noqa: E402
from hil.harness import Harness  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--phones", type=int, default=1000)
    ap.add_argument("--latency", type=float, default=0.05)
    ap.add_argument("--concurrency", type=int, default=250)
    ap.add_argument("--net", default="auto", help="the lab's net (default: a free one, hil.netlock)")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-poll-"))
    spec = {"name": "poll", "net": args.net if args.net == "auto" else int(args.net), "firmware_family": "uc-5.x",
            "timing": {"boot_time": 0.5, "boot_jitter": 3, "retry_interval": 5, "log_upload_period": 0, "dns_ttl": 1,
                       "http_latency": args.latency, "test_speed": True},
            "sites": [{"name": "hq", "phones": {"count": args.phones, "models": ["VVX 410"]},
                       "servers": [{"address": "provider", "expires": 20, "overlap": 5, "retry_timeout_ms": 500},
                                   {"address": "gateway", "expires": 20, "overlap": 5, "retry_timeout_ms": 500}],
                       "collector": {"syslog": f"127.0.0.1:{free_port()}", "events": f"127.0.0.1:{free_port()}"}}]}
    with Harness(work) as h:
        lab = h.lab(spec, "poll", ready_timeout=120, timeout=None)
        inv = inventory.load(lab.inventory)
        secrets = inventory.Secrets(inv)
        site = inv.sites[0]
        targets = [(p, secrets.credentials(p.credentials)) for p in site.phones]

        async def poll_all():
            async with Poller(concurrency=args.concurrency) as poller:
                t0 = time.perf_counter()
                results = await poller.poll(targets)
                return time.perf_counter() - t0, results

        t_async, results = asyncio.run(poll_all())
        assert all(r.ok for r in results), [r.error for r in results if not r.ok][:3]
        session = requests.Session()
        t0 = time.perf_counter()
        for p, c in targets:
            r = session.get(f"http://{p.address}:{p.http_port}/api/v1/mgmt/lineInfo", auth=(c.username, c.password), timeout=5)
            r.raise_for_status()
        t_seq = time.perf_counter() - t0
        print(f"phones:                       {args.phones} (each answers after {args.latency * 1000:.0f} ms)")
        print(f"async poll (one task, {args.concurrency} in flight): {t_async:.2f} s")
        print(f"sequential requests loop:     {t_seq:.2f} s")
        print(f"ratio:                        {t_seq / t_async:.1f}x  (target >= 20x)")

        # detection latency: poll round after round while the phones fail over
        gateway = site.gateway
        seen: dict[str, float] = {}

        async def watch(deadline: float):
            async with Poller(concurrency=args.concurrency) as poller:
                rounds = 0
                while time.time() < deadline and len(seen) < len(targets):
                    for r in await poller.poll([t for t in targets if t[0].mac not in seen]):
                        if r.ok and r.lines and r.lines[0].get("ProxyAddress") == gateway:
                            seen.setdefault(r.mac, r.t)
                    rounds += 1
                return rounds

        drv = routers.connect(site.router, secrets.credentials(site.router.credentials))
        t_cut = time.time()
        outage = Outage(id=f"bench-poll-{os.getpid()}", mode="link-down", max_duration=120)
        drv.cut(outage)
        try:
            rounds = asyncio.run(watch(time.time() + 40))
        finally:
            drv.restore(outage)
            drv.close()
        truth = lab.status(timeout=60)["ground_truth"]["phones"]
        latencies = []
        for mac, t_seen in seen.items():
            t_true = next((e["t"] for e in truth[mac]["events"] if e["kind"] == "working_server"
                           and e["data"]["server"] == 2 and e["t"] >= t_cut), None)
            if t_true is not None:
                latencies.append(t_seen - t_true)
        latencies.sort()
        print(f"failover detected by polling: {len(latencies)}/{args.phones} phones in {rounds} rounds")
        print(f"detection latency p50:        {statistics.median(latencies) * 1000:.0f} ms")
        print(f"detection latency p99:        {latencies[int(len(latencies) * 0.99) - 1] * 1000:.0f} ms  (target <= 1000 ms)")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
