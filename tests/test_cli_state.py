"""Issue 17: without FLEET_REDIS_URL there is no state to read (exit 3, no redis-server left behind); a command that
creates state runs on a private Redis it stops; a Redis URL's password never shows, whatever characters it holds."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from soundpoint import redisboot
from soundpoint.redact import redact

from conftest import BIN, SMALL_INVENTORY


def _redis_servers_under(root: Path) -> list[int]:
    """redis-server processes whose working directory (Redis chdirs to its `dir`) is under `root`."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if Path(f"/proc/{pid}/comm").read_text().strip() != "redis-server":
                continue
            if Path(os.readlink(f"/proc/{pid}/cwd")).is_relative_to(root):
                found.append(int(pid))
        except OSError:
            continue
    return found


def _fleet(args: list[str], env: dict, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([BIN / "fleet", *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("args", [["status"], ["experiment", "list"], ["experiment", "show", "x"],
                                  ["rollout", "status", "r1"], ["rollout", "abort", "r1"], ["rollout", "list"]])
def test_reading_state_without_redis_says_there_is_none_and_starts_nothing(args, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "FLEET_REDIS_URL"} | {"TMPDIR": str(tmp_path), "COLUMNS": "250"}
    res = _fleet(args, env, tmp_path)
    assert res.returncode == 3, (res.returncode, res.stdout, res.stderr)
    assert "no fleet state: FLEET_REDIS_URL is not set" in res.stderr, res.stderr
    assert _redis_servers_under(tmp_path) == [] and not list(tmp_path.glob("fleet-redis-*")), list(tmp_path.iterdir())


def test_a_private_redis_for_a_run_is_stopped_with_its_directory(tmp_path, monkeypatch):
    monkeypatch.delenv("FLEET_REDIS_URL", raising=False)
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr("tempfile.tempdir", None)
    url = redisboot.private_redis_url(announce=False)
    try:
        assert os.environ["FLEET_REDIS_URL"] == url
        pids = _redis_servers_under(tmp_path)
        assert len(pids) == 1 and len(list(tmp_path.glob("fleet-redis-*"))) == 1, (pids, list(tmp_path.iterdir()))
    finally:
        redisboot.stop_private()
    assert _redis_servers_under(tmp_path) == [] and not list(tmp_path.glob("fleet-redis-*"))
    assert "FLEET_REDIS_URL" not in os.environ


# every character an unescaped URL password can hold that ended the hidden part before: space, quotes, <, >, @
PASSWORD = "p a\"s's<w>o@r\nd://x"
URLS = [f"redis://fleet:{PASSWORD}@127.0.0.1:9/0",             # nothing listens: connection refused
        f"redis://fleet:{PASSWORD}@127.0.0.1:notaport/0",       # the URL does not parse
        f"redis://fleet:{PASSWORD}@[::1/0"]                     # nor does this one


def _leaks(text: str) -> bool:
    return any(part in text for part in ("p a", "s's", "<w>", "o@r", "d://x"))


def test_redaction_hides_any_password_character():
    for text in (f"cannot reach Redis at {URLS[0]}: ConnectionError", f"x {URLS[1]} y", f"<a href='{URLS[0]}'>"):
        assert not _leaks(redact(text)), redact(text)
    assert redact(f"at {URLS[0]}: refused") == "at redis://***@127.0.0.1:9/0: refused"
    assert redact("no URL, just mail@example") == "no URL, just mail@example"


@pytest.mark.parametrize("url", URLS)
@pytest.mark.parametrize("args", [["status"], ["experiment", "list"], ["rollout", "status", "r1"], ["rollout", "list"],
                                  ["worker", "--inventory", "inv.yml", "--site", "hq"],
                                  ["collector", "--inventory", "inv.yml", "--site", "hq"],
                                  ["scheduler", "--inventory", "inv.yml", "--playbooks", "."]])
def test_a_redis_password_never_shows_in_an_error(url, args, tmp_path):
    (tmp_path / "inv.yml").write_text(SMALL_INVENTORY)
    (tmp_path / "secrets.yml").write_text("".join(f"{n}: {{username: u, password: pw}}\n" for n in ("boot", "r", "admin")))
    (tmp_path / "secrets.yml").chmod(0o600)
    env = dict(os.environ, FLEET_REDIS_URL=url, COLUMNS="250")
    res = _fleet(args, env, tmp_path)
    out = res.stdout + res.stderr
    assert res.returncode == 3, (res.returncode, out)
    assert not _leaks(out), out
    assert "redis://***@" in out, out
