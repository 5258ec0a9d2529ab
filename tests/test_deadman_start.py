"""Unit: the dead-man's switch starts in a systemd scope of its own where systemd-run works (so logind's
KillUserProcesses cannot kill it with the SSH session), and without one where it does not; it restores either way.

The snippet runs in a real /bin/sh with the variables the cut script gives it; `systemd-run` is a stand-in
on PATH that records how it was called."""
from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from conftest import wait_until
from fleet.drivers.router.ssh_base import DEADMAN_START

# What systemd-run --scope does for the command: run it (here: after its options), in the same process.
SCOPE_WORKS = """#!/bin/sh
echo "$1 $2 $3 $4 $5" >> "$LOG"
while [ $# -gt 0 ]; do case "$1" in --*) shift ;; *) break ;; esac; done
exec "$@"
"""
# systemd-run that passes the probe and then refuses the dead-man itself (a policy that denies long-running units)
SCOPE_REFUSES_THE_DEADMAN = """#!/bin/sh
echo "$1 $2 $3 $4 $5" >> "$LOG"
[ "$5" = true ] && exit 0
exit 1
"""


# The restore the cut hands the dead-man (the real one takes the outage's lock and undoes the cut): here it leaves
# a mark saying who ran it with which arguments.
RESTORE = 'echo "$5 $1 $2 $3 $4" > "$1/$2.restored"\n'


def _run(tmp_path: Path, systemd_run: str | None, after_start=None) -> tuple[Path, list[str]]:
    outages, bin_dir = tmp_path / "outages", tmp_path / "bin"
    outages.mkdir()
    bin_dir.mkdir()
    log = tmp_path / "systemd-run.log"
    if systemd_run is not None:
        (bin_dir / "systemd-run").write_text(systemd_run)
        (bin_dir / "systemd-run").chmod(0o755)
    f = outages / "o1"
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", LOG=str(log),
               D=str(outages), ID="o1", WAN="wan0", L=str(tmp_path / "wanlocks"), MAX="1", F=str(f), RESTORE=RESTORE)
    subprocess.run(["sh", "-c", DEADMAN_START], env=env, check=True, timeout=10)
    if after_start is not None:
        after_start(f)
    calls_so_far = lambda: log.read_text() if log.exists() else "no systemd-run call"  # noqa: E731
    restored = Path(f"{f}.restored")
    # the shell creates the file (`>`) before echo writes its line: written means its line is whole
    wait_until(lambda: restored.exists() and restored.read_text().endswith("\n"), 8, "the dead-man's restore",
               step=0.05, state=calls_so_far)
    calls = log.read_text().splitlines() if log.exists() else []
    return f, calls


def test_deadman_runs_in_its_own_scope_where_systemd_run_works(tmp_path):
    f, calls = _run(tmp_path, SCOPE_WORKS)
    assert calls[0] == "--scope --quiet --collect --no-ask-password true", calls
    assert calls[1:] == ["--scope --quiet --collect --no-ask-password nohup"], calls
    assert Path(f"{f}.restored").read_text().split() == ["deadman", str(f.parent), "o1", "wan0", str(tmp_path / "wanlocks")]
    assert int(Path(f"{f}.deadman").read_text()) > 0


def test_deadman_refused_by_systemd_run_is_started_without_it(tmp_path):
    f, calls = _run(tmp_path, SCOPE_REFUSES_THE_DEADMAN)
    assert [c.split()[4] for c in calls] == ["true", "nohup"], calls
    assert Path(f"{f}.restored").read_text().split()[0] == "deadman", "the cut went ahead with no dead-man"


@pytest.mark.parametrize("fake", ["#!/bin/sh\nexit 1\n"], ids=["systemd-run-fails"])
def test_deadman_without_a_working_systemd_run_is_plain_nohup(tmp_path, fake):
    f, calls = _run(tmp_path, fake)
    assert calls == [], calls      # the stand-in logs nothing: only the probe ran, and it failed
    assert Path(f"{f}.restored").read_text().split()[0] == "deadman"


def test_deadman_runs_its_own_copy_of_the_restore_not_a_file_that_can_be_replaced(tmp_path):
    """The dead-man sleeps for up to max_duration and then restores as the SSH user (often root): what it runs is
    the copy the cut handed it, so a restore.sh planted in the outage directory meanwhile is never run."""
    planted = tmp_path / "planted-ran"

    def plant(f: Path) -> None:
        Path(f"{f}.restore.sh").write_text(f'echo attacker > "{planted}"\n')

    f, _ = _run(tmp_path, None, after_start=plant)
    assert not planted.exists(), "the dead-man ran a restore script planted in the outage directory"
    assert Path(f"{f}.restored").read_text().split()[0] == "deadman"


def test_cut_prunes_outages_restored_more_than_a_week_ago_and_keeps_the_rest(tmp_path):
    """The PRUNE snippet of every cut: old restored outages go; unrestored, locked or recent ones stay."""
    from fleet.drivers.router.ssh_base import PRUNE, PRUNE_DAYS

    d = tmp_path / "fleet outages"      # a space in the path, as $HOME may have
    d.mkdir()
    old = time.time() - (PRUNE_DAYS + 1) * 86400

    def outage(oid: str, restored: bool, age: float, locked: bool = False) -> None:
        for suffix in ("cut", "rules", "restore.sh", "deadman") + (("restored",) if restored else ()):
            (d / f"{oid}.{suffix}").write_text("x")
            os.utime(d / f"{oid}.{suffix}", (age, age))
        if locked:
            (d / f"{oid}.lock").mkdir()

    outage("old-restored-1", True, old)
    outage("old-unrestored", False, old)
    outage("old-but-locked", True, old, locked=True)
    outage("recent-restored", True, time.time() - 3600)
    outage("old-restored-1x", True, time.time() - 60)        # shares a prefix with a pruned id, but is recent
    for suffix in ("cancelled", "restore.sh"):                 # restored before its cut ever ran, long ago
        (d / f"old-cancelled.{suffix}").write_text("x")
        os.utime(d / f"old-cancelled.{suffix}", (old, old))
    subprocess.run(["sh", "-c", PRUNE], env=dict(os.environ, D=str(d)), check=True, timeout=10)
    left = {p.name.split(".", 1)[0] for p in d.iterdir()}
    assert left == {"old-unrestored", "old-but-locked", "recent-restored", "old-restored-1x"}, sorted(left)
    assert len(list(d.glob("old-restored-1x.*"))) == 5


def test_no_cut_when_the_deadman_cannot_start(tmp_path):
    """A dead-man whose shell never runs (here nohup itself fails) stops the cut script before anything is cut:
    exit 76 and a message saying nothing was cut."""
    outages, bin_dir = tmp_path / "outages", tmp_path / "bin"
    outages.mkdir()
    bin_dir.mkdir()
    (bin_dir / "nohup").write_text("#!/bin/sh\nexit 1\n")
    (bin_dir / "nohup").chmod(0o755)
    (bin_dir / "systemd-run").write_text("#!/bin/sh\nexit 1\n")
    (bin_dir / "systemd-run").chmod(0o755)
    f = outages / "o1"
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", D=str(outages), ID="o1", WAN="wan0", MAX="1",
               F=str(f), RESTORE=RESTORE)
    res = subprocess.run(["sh", "-c", DEADMAN_START + '\necho "cutting now"'], env=env, capture_output=True, text=True,
                         timeout=30)
    assert res.returncode == 76, (res.returncode, res.stderr)
    assert "dead-man's switch did not start" in res.stderr and "cutting now" not in res.stdout, res
