"""CPU of the per-phone REST lock (fleet.state.lease.PhoneRestLock): what every REST request to a phone pays.

Takes and releases the lock of distinct phones from 1 and from 25 threads (a rollout worker's pool) against a
private redis-server, and prints CPU and wall milliseconds per lock cycle of this process. A rollout's push
makes four REST requests per phone, each inside one lock cycle. Until session 18 each cycle started and
joined a renewal thread of its own: 0.547/0.760 ms CPU per cycle at 1/25 threads, against 0.305/0.512 ms with
the process's one RestLockKeeper renewing what is held (same machine, one run each).

Run: .venv/bin/python bench/rest_lock.py [--cycles N]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from fleet.state.lease import PhoneRestLock  # noqa: E402
from fleet.state.store import Store  # noqa: E402
from soundpoint.redisboot import start_private  # noqa: E402


def cycles(store: Store, total: int, threads: int) -> tuple[float, float]:
    """CPU and wall ms per lock cycle, `total` cycles shared out over `threads` threads (a phone each)."""
    def one(k: int) -> None:
        for _ in range(total // threads):
            with PhoneRestLock(store, f"0004f2{k:06x}", "bench"):
                pass
    cpu, wall = time.process_time(), time.perf_counter()
    workers = [threading.Thread(target=one, args=(k,)) for k in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    done = total // threads * threads
    return (time.process_time() - cpu) / done * 1e3, (time.perf_counter() - wall) / done * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cycles", type=int, default=4000)
    args = ap.parse_args()
    url, proc = start_private(Path(tempfile.mkdtemp(prefix="bench-rest-lock-")))
    try:
        store = Store(url)
        cycles(store, 200, 1)           # warm: connections, scripts
        for threads in (1, 25):
            cpu, wall = cycles(store, args.cycles, threads)
            print(f"{threads:2d} thread(s): {cpu:.3f} ms CPU, {wall:.3f} ms wall per lock cycle "
                  f"({args.cycles} cycles, this process; Redis's own CPU not counted)")
    finally:
        proc.terminate()
        proc.wait(10)


if __name__ == "__main__":
    main()
