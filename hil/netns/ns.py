"""Create and remove namespaces, links and processes, recording each before it exists.

The record (`netns.json` in the lab's state directory) is written before every
creation, so a lab killed halfway leaves a list that covers everything it made;
`teardown` also removes any namespace or root-side link carrying the lab's
prefix, which covers a record lost with its directory.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

from . import plan

RECORD = "netns.json"


class NetnsError(RuntimeError):
    """A command that builds the lab failed; the message names the command and what it printed."""


def run(argv: list[str], *, ns: str | None = None, check: bool = True, stdin: str | None = None) -> str:
    full = (["ip", "netns", "exec", ns] if ns else []) + argv
    res = subprocess.run(full, capture_output=True, text=True, input=stdin, timeout=30)
    if check and res.returncode != 0:
        raise NetnsError(f"`{' '.join(full)}` exited {res.returncode}: {res.stderr.strip()[-300:]}")
    return res.stdout


def ip(*args: str, ns: str | None = None, check: bool = True) -> str:
    return run(["ip", *(["-n", ns] if ns else []), *args], check=check)


def ip_batch(lines: list[str], ns: str) -> None:
    """Many `ip` commands in one process (hundreds of phone addresses in one call)."""
    if lines:
        run(["ip", "-n", ns, "-batch", "-"], stdin="\n".join(lines) + "\n")


def list_namespaces() -> list[str]:
    out = run(["ip", "netns", "list"], check=False)
    return [line.split()[0] for line in out.splitlines() if line.strip()]


class Record:
    """What this lab created, in a JSON file written before each creation."""

    def __init__(self, state_dir: Path, net: int) -> None:
        self.path = state_dir / RECORD
        self.data: dict = {"net": net, "namespaces": [], "links": [], "pids": []}

    def _save(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data))
        os.replace(tmp, self.path)

    def add(self, kind: str, value) -> None:
        if value not in self.data[kind]:
            self.data[kind].append(value)
            self._save()

    def process(self, pid: int) -> None:
        self.add("pids", [pid, start_time(pid)])

    def namespace(self, name: str) -> None:
        self.add("namespaces", name)
        if name not in list_namespaces():
            run(["ip", "netns", "add", name])
        ip("link", "set", "lo", "up", ns=name)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0] != "Z"
    except (OSError, IndexError):
        return False


def _kill_all(pids: set[int], timeout: float = 5.0) -> None:
    """SIGTERM, then SIGKILL whatever is still there when the deadline passes."""
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except OSError:
            pass
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.05)
    for pid in pids:
        if _alive(pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass


def start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (field 22 of /proc/PID/stat): with the pid, an identity."""
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def ns_pids(name: str) -> set[int]:
    out = run(["ip", "netns", "pids", name], check=False)
    return {int(p) for p in out.split() if p.isdigit()}


def teardown(net: int, state_dir: Path | None = None) -> list[str]:
    """Remove every process, namespace and root-side link of lab `net`; returns the namespaces removed."""
    recorded: dict = {"namespaces": [], "links": [], "pids": []}
    if state_dir is not None and (state_dir / RECORD).exists():
        try:
            recorded = json.loads((state_dir / RECORD).read_text())
        except (OSError, ValueError):
            pass
    pre = plan.prefix(net) + "-"
    names = [n for n in list_namespaces() if n.startswith(pre) or n in recorded.get("namespaces", [])]
    # a recorded pid is only trusted while it is still the same process (pids are reused): same start time
    pids = {p[0] for p in recorded.get("pids", []) if isinstance(p, list) and len(p) == 2 and p[0] != os.getpid()
            and start_time(p[0]) == p[1]}
    for name in names:
        pids |= ns_pids(name)
    pids.discard(os.getpid())
    _kill_all({p for p in pids if _alive(p)})
    for name in names:
        run(["ip", "netns", "del", name], check=False)
    links = set(recorded.get("links", []))
    out = run(["ip", "-o", "link", "show"], check=False)
    for line in out.splitlines():
        dev = line.split(":")[1].strip().split("@")[0] if line.count(":") >= 2 else ""
        if dev.startswith(plan.prefix(net) + "h"):
            links.add(dev)
    for link in links:
        ip("link", "del", link, check=False)
    if state_dir is not None:
        (state_dir / RECORD).unlink(missing_ok=True)
    return names


def teardown_recorded(state_dir: Path) -> list[str]:
    """`hil down` for a namespace lab whose process is gone: the record names the lab's `net`."""
    try:
        net = int(json.loads((state_dir / RECORD).read_text())["net"])
    except (OSError, ValueError, KeyError, TypeError):
        return []
    return teardown(net, state_dir)
