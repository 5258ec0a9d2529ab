"""Unit: the router's outage directory is checked by the scripts themselves, on the router, before anything else.

It holds the marks that decide what a late task may do and is where the dead-man (running as the SSH user, often
root) works, so any user who can rename a directory above it can swap in their own. The prologue of every router
script runs here in a real /bin/sh, as root (the lab router's SSH user); "another user" is uid 65534."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from fleet.drivers.router.ssh_base import _PROLOGUE

OTHER_UID = 65534
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="giving a directory to another user needs root")


def _prologue(state_dir: str) -> subprocess.CompletedProcess:
    return subprocess.run(["sh", "-c", _PROLOGUE + 'echo "checked $D"', "fleet", state_dir, "o1", "wan0"],
                          capture_output=True, text=True, timeout=30)


def _refused(res: subprocess.CompletedProcess, why: str) -> None:
    assert res.returncode == 71, (res.returncode, res.stdout, res.stderr)
    assert "checked" not in res.stdout and why in res.stderr, res.stderr


def test_a_fresh_directory_under_safe_parents_is_made_private_and_marked(tmp_path):
    d = tmp_path / "router" / "outages"
    res = _prologue(str(d))
    assert res.returncode == 0 and f"checked {d}" in res.stdout, res
    assert (d / ".fleet-outages").exists() and d.stat().st_mode & 0o777 == 0o700
    assert _prologue(str(d)).returncode == 0        # and it passes again once it holds outages
    (d / "o1.cut").write_text("")
    assert _prologue(str(d)).returncode == 0


def _shared_tmp(tmp_path: Path) -> Path:
    """A stand-in for /tmp (root's, sticky, world-writable): the real one is never handed to these scripts, since a
    regression would chmod it under every other user of this machine."""
    shared = tmp_path / "tmp"
    shared.mkdir()
    shared.chmod(0o1777)
    return shared


@pytest.mark.parametrize("suffix", ["", "/"])
def test_a_world_writable_shared_directory_like_tmp_is_refused_and_left_as_it_was(tmp_path, suffix):
    shared = _shared_tmp(tmp_path)
    _refused(_prologue(f"{shared}{suffix}"), "writable by group or others")
    assert shared.stat().st_mode & 0o7777 == 0o1777, "the shared directory's mode was changed"
    assert not (shared / ".fleet-outages").exists()


@pytest.mark.parametrize("rel", ["tmp/..", "tmp/../x", "tmp/./fleet", "tmp/fleet/."])
def test_dot_components_are_refused(tmp_path, rel):
    _shared_tmp(tmp_path)
    mode = tmp_path.stat().st_mode
    _refused(_prologue(f"{tmp_path}/{rel}"), ". or .. component")
    assert tmp_path.stat().st_mode == mode and not (tmp_path / "x").exists() and not (tmp_path / "tmp" / "fleet").exists()


def test_a_relative_path_is_refused(tmp_path):
    res = subprocess.run(["sh", "-c", _PROLOGUE + 'echo "checked $D"', "fleet", "relative/dir", "o1", "wan0"],
                         capture_output=True, text=True, timeout=30, cwd=tmp_path)
    _refused(res, "not an absolute path")
    assert not (tmp_path / "relative").exists()


@needs_root
def test_a_parent_owned_by_another_user_is_refused(tmp_path):
    """That user could rename our directory away and put their own (and their restore) in its place."""
    parent = tmp_path / "theirs"
    parent.mkdir(mode=0o755)
    os.chown(parent, OTHER_UID, OTHER_UID)
    _refused(_prologue(str(parent / "outages")), f"{parent} belongs to uid {OTHER_UID}")
    assert not (parent / "outages").exists(), "the directory was created under another user's parent"


@needs_root
def test_an_existing_state_dir_under_a_parent_owned_by_another_user_is_refused(tmp_path):
    parent = tmp_path / "theirs"
    (parent / "outages").mkdir(parents=True)
    os.chown(parent, OTHER_UID, OTHER_UID)
    _refused(_prologue(str(parent / "outages")), "belongs to uid")


def test_a_grandparent_writable_by_others_is_refused(tmp_path):
    top = tmp_path / "open"
    (top / "mid").mkdir(parents=True)
    top.chmod(0o777)            # not sticky: anyone may rename mid away
    _refused(_prologue(str(top / "mid" / "outages")), f"{top} is writable by others")


def test_a_sticky_world_writable_ancestor_is_allowed_above_an_entry_of_ours(tmp_path):
    top = tmp_path / "sticky"
    top.mkdir()
    top.chmod(0o1777)           # as /tmp: nobody else can rename or remove our entry there
    res = _prologue(str(top / "ours" / "outages"))
    assert res.returncode == 0, res.stderr


@needs_root
def test_a_sticky_ancestor_does_not_cover_another_users_entry(tmp_path):
    top = tmp_path / "sticky"
    (top / "theirs").mkdir(parents=True)
    top.chmod(0o1777)
    os.chown(top / "theirs", OTHER_UID, OTHER_UID)
    _refused(_prologue(str(top / "theirs" / "outages")), "belongs to uid")


def test_a_symbolic_link_on_the_way_is_refused(tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    _refused(_prologue(str(tmp_path / "link" / "outages")), "is a symbolic link")
    (tmp_path / "real" / "outages").mkdir()
    (tmp_path / "link2").symlink_to(tmp_path / "real" / "outages")
    _refused(_prologue(str(tmp_path / "link2")), "is a symbolic link")


def test_a_directory_with_other_files_and_no_marker_is_not_dedicated(tmp_path):
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    (home / ".profile").write_text("x")
    _refused(_prologue(str(home)), "not a dedicated directory")
    assert not (home / ".fleet-outages").exists()


RACING_MKDIR = """#!/bin/sh
# A stand-in for mkdir: another user wins the race for $RACE, creating it the moment before we do.
for a in "$@"; do
  case "$a" in -*) ;; *)
    case "$a/" in "$RACE"/*) if [ ! -e "$RACE" ]; then "$REAL_MKDIR" "$RACE"; chown 65534:65534 "$RACE"; chmod 755 "$RACE"; fi ;; esac ;;
  esac
done
exec "$REAL_MKDIR" "$@"
"""


@needs_root
@pytest.mark.parametrize("depth", ["parent", "grandparent"])
def test_a_missing_ancestor_another_user_creates_first_is_refused_not_used(tmp_path, depth):
    """The walk looks, then makes what is missing: another user who makes a missing ancestor in between (here a
    mkdir stand-in does it for them) must not end up owning a directory above ours, or the cut passes and our
    own restore is later refused with the WAN down."""
    import shutil

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "mkdir").write_text(RACING_MKDIR)
    (bin_dir / "mkdir").chmod(0o755)
    race = tmp_path / "a" if depth == "grandparent" else tmp_path / "a" / "b"
    if depth == "parent":
        (tmp_path / "a").mkdir(mode=0o700)
    state_dir = tmp_path / "a" / "b" / "outages"
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", RACE=str(race), REAL_MKDIR=shutil.which("mkdir"))
    res = subprocess.run(["sh", "-c", _PROLOGUE + 'echo "checked $D"', "fleet", str(state_dir), "o1", "wan0"],
                         capture_output=True, text=True, timeout=30, env=env)
    assert race.stat().st_uid == OTHER_UID, "the stand-in did not race"
    _refused(res, f"{race} could not be made")
    assert not state_dir.exists(), "the outage directory was made under another user's directory"
