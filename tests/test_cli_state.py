"""Issue 17 and 19: without a Redis URL (no fleet.toml, no FLEET_REDIS_URL) every command that needs shared state
says how to configure one and exits 3, starting no redis-server of its own (a Redis per command left a worker and an
experiment on different ones); a Redis URL's password never shows, whatever characters it holds."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import yaml

from soundpoint.redact import redact

from conftest import BIN, ROOT, SMALL_INVENTORY


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


def _no_settings_env(tmp_path: Path) -> dict:
    """The environment of a user with no fleet.toml anywhere and no FLEET_* variable."""
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEET_")}
    return env | {"HOME": str(home), "XDG_CONFIG_HOME": str(home / ".config"), "TMPDIR": str(tmp_path), "COLUMNS": "250"}


def _valid_inputs(tmp_path: Path) -> tuple[Path, Path, Path]:
    """A valid inventory (its secrets file 0600), experiment playbook and rollout playbook: what remains is Redis."""
    (tmp_path / "inv.yml").write_text(SMALL_INVENTORY)
    (tmp_path / "secrets.yml").write_text("".join(f"{n}: {{username: u, password: pw}}\n" for n in ("boot", "r", "admin")))
    (tmp_path / "secrets.yml").chmod(0o600)
    exp = tmp_path / "exp.yml"
    exp.write_text(yaml.safe_dump({"kind": "experiment", "name": "x", "site": "hq", "steps": [
        {"name": "settle", "wait": 1}]}))
    rollout = tmp_path / "rollout.yml"
    rollout.write_text(yaml.safe_dump({"kind": "rollout", "name": "x", "params": {"reg.1.server.1.address": "voip.example",
                                                                                 "reg.1.server.1.expires": 120}}))
    return tmp_path / "inv.yml", exp, rollout


NEEDS_STATE = [["status"], ["experiment", "list"], ["experiment", "show", "x"], ["rollout", "status", "r1"],
               ["rollout", "abort", "r1"], ["rollout", "list"], ["experiment", "run", "exp.yml", "--inventory", "inv.yml"],
               ["rollout", "run", "rollout.yml", "--inventory", "inv.yml"],
               ["worker", "--inventory", "inv.yml", "--site", "hq"], ["collector", "--inventory", "inv.yml", "--site", "hq"],
               ["scheduler", "--inventory", "inv.yml", "--playbooks", "."]]


@pytest.mark.parametrize("args", NEEDS_STATE, ids=[" ".join(a[:2]) for a in NEEDS_STATE])
def test_without_a_redis_url_a_command_says_how_to_set_one_and_starts_nothing(args, tmp_path):
    _valid_inputs(tmp_path)
    res = _fleet(args, _no_settings_env(tmp_path), tmp_path)
    assert res.returncode == 3, (res.returncode, res.stdout, res.stderr)
    assert "no Redis URL: run `fleet config init --redis-url" in res.stderr and "or set FLEET_REDIS_URL" in res.stderr, \
        res.stderr
    assert "Traceback" not in res.stderr
    assert _redis_servers_under(tmp_path) == [] and not list(tmp_path.glob("fleet-redis-*")), list(tmp_path.iterdir())


def test_a_dry_run_needs_no_redis(tmp_path):
    """A dry run reads Redis only to diff against what was pushed before: without a URL it diffs against the inventory."""
    _valid_inputs(tmp_path)
    res = _fleet(["rollout", "run", "rollout.yml", "--inventory", "inv.yml", "--dry-run"], _no_settings_env(tmp_path),
                 tmp_path)
    assert res.returncode == 0, (res.stdout, res.stderr)
    assert "reg.1.server.1.expires" in res.stdout


def test_the_readme_names_the_message():
    """What the newcomer reads is what the command says."""
    assert "no Redis URL" in (ROOT / "README.md").read_text()


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
