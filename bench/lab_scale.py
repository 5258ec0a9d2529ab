"""How many virtual phones one process sustains on one core without a late refresh.

Starts a lab in this process (phones with 2 servers each, 60 s expiry, no HTTP
servers on the phones), waits until every phone is registered, then watches
for a window of refresh cycles and prints phones, REGISTERs per second and the
worst and p99 lateness of a refresh (sent after it was due).
Run: .venv/bin/python bench/lab_scale.py [--phones 5000] [--window 70]
"""
from __future__ import annotations

import argparse
import asyncio
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from hil.lab import Lab  # noqa: E402
from hil.labfile import LabFile  # noqa: E402


async def run(phones: int, window: float, net: int) -> None:
    spec = LabFile.model_validate({
        "name": "scale", "net": net, "http": False,
        "timing": {"boot_time": 0, "boot_jitter": max(1.0, phones / 500), "retry_interval": 30, "log_upload_period": 0, "dns_ttl": 300,
                   "test_speed": True},
        "sites": [{"name": "big", "phones": {"count": phones, "models": ["SoundPoint IP 650"]},
                   "servers": [{"address": "provider", "expires": 60, "overlap": 10},
                               {"address": "gateway", "expires": 60, "overlap": 10}],
                   "collector": {"syslog": "127.0.0.1:9", "events": "127.0.0.1:9"}}]})
    lab = Lab(spec, Path(tempfile.mkdtemp(prefix="lab-scale-")))
    t0 = time.monotonic()
    await lab.start()
    ok = await lab.wait_ready(300)
    t_ready = time.monotonic() - t0
    all_phones = [p for rt in lab.sites for p in rt.phones]
    for p in all_phones:
        p.lateness.clear()
    sent0 = sum(p.register_count for p in all_phones)
    cpu0 = time.process_time()
    await asyncio.sleep(window)   # the measurement window, not a wait for a condition
    sent = sum(p.register_count for p in all_phones) - sent0
    cpu = time.process_time() - cpu0
    late = sorted(x for p in all_phones for x in p.lateness)
    down = sum(1 for p in all_phones for r in p.regs for s in r.servers if s.state != "registered")
    await lab.stop()
    print(f"phones:                     {phones} (2 servers each, expires 60 s, all registered: {ok}, in {t_ready:.1f} s)")
    print(f"window:                     {window:.0f} s; refreshes observed: {len(late)}")
    print(f"REGISTER sent per second:   {sent / window:.0f} (incl. digest retries)")
    print(f"refresh lateness worst:     {late[-1] * 1000 if late else float('nan'):.0f} ms; "
          f"p99 {late[int(len(late) * 0.99)] * 1000 if late else float('nan'):.0f} ms")
    print(f"server registrations down:  {down}")
    print(f"CPU use of this process:    {cpu / window * 100:.0f}% of one core; "
          f"max RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--phones", type=int, default=5000)
    ap.add_argument("--window", type=float, default=70)
    ap.add_argument("--net", type=int, default=55)
    args = ap.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    asyncio.run(run(args.phones, args.window, args.net))


if __name__ == "__main__":
    main()
