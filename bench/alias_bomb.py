"""How long and how much memory refusing a 1 KB YAML alias bomb takes ("billion laughs", 10^9 leaves).

Usage: .venv/bin/python bench/alias_bomb.py
Prints the document size, the time to refusal and the peak memory of this process (ru_maxrss)
and of the Python heap during the load (tracemalloc). Before the node budget, the same document
in a `mac:` field took minutes and gigabytes.
"""
from __future__ import annotations

import resource
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path


def bomb_document(levels: int = 9, fanout: int = 10) -> str:
    """Level 1 holds `fanout` strings, each next level `fanout` aliases of the previous one: fanout**levels leaves."""
    lines = [f"l1: &l1 [{', '.join(['lol'] * fanout)}]"]
    for i in range(2, levels + 1):
        lines.append(f"l{i}: &l{i} [{','.join([f'*l{i - 1}'] * fanout)}]")
    lines.append("name: corpus")
    lines.append("sites: [{name: hq, gateway: 127.0.0.1, boot_server: {url: 'http://127.0.0.1/'},")
    lines.append(f"  phones: [{{mac: *l{levels}, model: VVX 410, address: 127.0.0.2, credentials: a}}]}}]")
    return "\n".join(lines) + "\n"


def main() -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from fleet.config import inventory
    from soundpoint.yamlfile import FileError

    doc = bomb_document()
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "bomb.yml"
        path.write_text(doc)
        rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        tracemalloc.start()
        t0 = time.perf_counter()
        try:
            inventory.load(path)
            outcome = "ACCEPTED (bad)"
        except FileError as exc:
            outcome = f"refused: {exc}"
        elapsed = time.perf_counter() - t0
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        rss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(f"document: {len(doc)} bytes, {10 ** 9:,} leaves when expanded")
    print(outcome)
    print(f"time to refusal: {elapsed * 1000:.1f} ms")
    print(f"peak Python heap during the load: {peak / 1024:.0f} KiB")
    print(f"process peak RSS: {rss_after / 1024:.1f} MiB (before the load: {rss_before / 1024:.1f} MiB)")


if __name__ == "__main__":
    main()
