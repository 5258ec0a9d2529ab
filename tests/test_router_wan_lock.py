"""Unit: one outage per WAN interface on a router, whatever each controller's outage directory; its locks broken
only when their holder is gone, and only once.

The scripts' prologue runs in a real /bin/sh with stand-in directories under tmp_path (never the router default
/run/fleet of this machine). "Another user" is uid 65534."""
from __future__ import annotations

import os
import shutil
import subprocess
import threading
from pathlib import Path

import pytest

from fleet.drivers.router.ssh_base import _PROLOGUE

OTHER_UID = 65534
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="giving a directory to another user needs root")

# what a cut does around its precheck: take the interface, mark the outage as cutting, keep the interface held
TAKE = 'take_wan; : > "$F.cutting"; WAN_TAKEN=0; echo "taken by $ID"'


def _run(state_dir: Path, oid: str, locks: Path, body: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(["sh", "-c", _PROLOGUE + body, "fleet", str(state_dir), oid, "wan0", str(locks)],
                          capture_output=True, text=True, timeout=60, env=env)


def test_two_controllers_with_different_state_dirs_see_one_wan_lock(tmp_path):
    """Two controllers (two inventories) with their own state_dir: the second outage on the interface is refused,
    naming the first; the first's restore frees it for the next."""
    locks = tmp_path / "run-fleet"
    first = _run(tmp_path / "ctl-a" / "outages", "o1", locks, TAKE)
    assert first.returncode == 0 and "taken by o1" in first.stdout, first.stderr
    second = _run(tmp_path / "ctl-b" / "outages", "o2", locks, TAKE)
    assert second.returncode == 77, (second.returncode, second.stdout, second.stderr)
    assert "already in outage o1" in second.stderr and "taken" not in second.stdout, second.stderr
    restore = _run(tmp_path / "ctl-a" / "outages", "o1", locks, 'echo "x" > "$F.restored"; release_wan; echo released')
    assert restore.returncode == 0 and "released" in restore.stdout, restore.stderr
    again = _run(tmp_path / "ctl-b" / "outages", "o2", locks, TAKE)
    assert again.returncode == 0 and "taken by o2" in again.stdout, again.stderr


def test_the_wan_lock_directory_is_made_private(tmp_path):
    locks = tmp_path / "run" / "fleet"
    res = _run(tmp_path / "outages", "o1", locks, TAKE)
    assert res.returncode == 0, res.stderr
    assert locks.stat().st_mode & 0o777 == 0o700 and (locks / "wan-wan0").read_text().split()[0] == "o1"


def test_a_holder_whose_outage_directory_cannot_be_read_holds_the_interface(tmp_path):
    locks = tmp_path / "locks"
    locks.mkdir(mode=0o700)
    (locks / "wan-wan0").write_text(f"o9 1700000000 {tmp_path / 'gone'}\n")
    res = _run(tmp_path / "outages", "o2", locks, TAKE)
    assert res.returncode == 77 and "already in outage o9 since 1700000000" in res.stderr, res.stderr


@pytest.mark.parametrize("mode", [0o770, 0o707, 0o1777])
def test_a_wan_lock_directory_writable_by_others_is_refused(tmp_path, mode):
    locks = tmp_path / "locks"
    locks.mkdir()
    locks.chmod(mode)
    res = _run(tmp_path / "outages", "o1", locks, TAKE)
    assert res.returncode == 71 and f"WAN lock directory {locks}: it is writable by group or others" in res.stderr, \
        res.stderr
    assert not (locks / "wan-wan0").exists() and locks.stat().st_mode & 0o7777 == mode


def test_no_wan_lock_directory_given_is_refused(tmp_path):
    res = subprocess.run(["sh", "-c", _PROLOGUE + TAKE, "fleet", str(tmp_path / "outages"), "o1", "wan0"],
                         capture_output=True, text=True, timeout=30)
    assert res.returncode == 71 and "WAN lock directory : none given" in res.stderr, res.stderr


@needs_root
def test_a_wan_lock_directory_of_another_user_is_refused(tmp_path):
    locks = tmp_path / "locks"
    locks.mkdir(mode=0o700)
    os.chown(locks, OTHER_UID, OTHER_UID)
    res = _run(tmp_path / "outages", "o1", locks, TAKE)
    assert res.returncode == 71 and f"belongs to uid {OTHER_UID}" in res.stderr, res.stderr


# rm, slowed for a stale lock (one whose pid file still names the dead holder): the first caller waits until a
# second arrives (at most 3 s), so two waiters who both saw the dead holder interleave the worst way.
SLOW_RM = """#!/bin/sh
for a in "$@"; do case "$a" in -*) ;; *) target=$a ;; esac; done
if [ "$(cat "$target/pid" 2>/dev/null)" = "$DEAD" ]; then
  if "$REAL_MKDIR" "$T/first" 2>/dev/null; then
    n=0; while [ ! -e "$T/second" ] && [ "$n" -lt 30 ]; do sleep 0.1; n=$((n+1)); done
  else
    "$REAL_MKDIR" "$T/second" 2>/dev/null; sleep 1.5
  fi
fi
exec "$REAL_RM" "$@"
"""
HOLD = 'mkdir_lock 100 "$LK" || { echo "no lock"; exit 9; }; echo "acquired $$" >> "$T/log"; sleep 2; ' \
       'echo "released $$" >> "$T/log"; rm -rf "$LK"'


def test_two_waiters_on_a_stale_lock_break_it_once_and_hold_it_one_at_a_time(tmp_path):
    """A lock left by a killed script: both waiters see its holder gone; the second must not remove the lock the
    first has taken since."""
    bin_dir, t = tmp_path / "bin", tmp_path / "t"
    bin_dir.mkdir()
    t.mkdir()
    (bin_dir / "rm").write_text(SLOW_RM)
    (bin_dir / "rm").chmod(0o755)
    dead = subprocess.Popen(["true"])
    dead.wait()
    lock = tmp_path / "outages-held" / "wan-wan0.lock"
    lock.mkdir(parents=True)
    (lock / "pid").write_text(f"{dead.pid}\n")
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", T=str(t), DEAD=str(dead.pid), LK=str(lock),
               REAL_MKDIR=shutil.which("mkdir"), REAL_RM=shutil.which("rm"))
    results: list[subprocess.CompletedProcess] = []
    waiters = [threading.Thread(target=lambda k=k: results.append(
        _run(tmp_path / f"outages-{k}", f"o{k}", tmp_path / "locks", HOLD, env))) for k in (1, 2)]
    for w in waiters:
        w.start()
    for w in waiters:
        w.join(60)
    assert len(results) == 2 and all(r.returncode == 0 for r in results), [(r.returncode, r.stderr) for r in results]
    events = (t / "log").read_text().split()
    # acquired A, released A, acquired B, released B: never two holders at once
    pairs = list(zip(events[0::2], events[1::2]))
    assert [p[0] for p in pairs] == ["acquired", "released", "acquired", "released"], events
    assert pairs[0][1] == pairs[1][1] and pairs[2][1] == pairs[3][1] and pairs[0][1] != pairs[2][1], events
