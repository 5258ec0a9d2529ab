"""Named crash points for fault tests, in the spirit of etcd's gofail.

`FLEET_FAILPOINTS="rollout.reboot_sent=kill@2"` makes the second pass through
that point SIGKILL the whole worker process group: no cleanup, no acks, the
way a host dies. `rollout.reboot_sent:KEY=kill@1` counts only the passes made
with that key (a phone's MAC), so a test can pick the phone. Random kills
rarely land inside the few milliseconds between claiming a reboot and
recording it; a failpoint lands there every time. Unset
(the only production setting), a failpoint is one dictionary lookup.
"""
from __future__ import annotations

import functools
import os
import signal
import threading

_hits: dict[str, int] = {}
_lock = threading.Lock()


@functools.lru_cache(maxsize=1)
def _armed() -> dict[str, int]:
    armed: dict[str, int] = {}
    for item in filter(None, (s.strip() for s in os.environ.get("FLEET_FAILPOINTS", "").split(","))):
        name, _, action = item.partition("=")
        kind, _, count = action.partition("@")
        if kind != "kill" or not count.isdigit():
            raise ValueError(f"FLEET_FAILPOINTS: {item!r} is not NAME=kill@N")
        armed[name] = int(count)
    return armed


def failpoint(name: str, key: str = "") -> None:
    armed = _armed()
    if not armed:
        return
    if f"{name}:{key}" in armed:
        name = f"{name}:{key}"
    target = armed.get(name)
    if target is None:
        return
    with _lock:
        _hits[name] = _hits.get(name, 0) + 1
        fire = _hits[name] == target
    if fire:
        os.killpg(os.getpgid(0), signal.SIGKILL)
