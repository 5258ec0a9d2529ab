"""fleet.toml: where it is looked for, what overrides it, what `fleet config show` and `fleet config init` say.

Unit tests of fleet.config.settings with temporary working and home directories, and the real `fleet config`
commands in subprocesses with HOME and XDG_CONFIG_HOME pointing into tmp_path (no FLEET_* variable inherited).
"""
from __future__ import annotations

import json
import os
import stat
import subprocess
from pathlib import Path

import pytest

from fleet.config import settings
from soundpoint.yamlfile import FileError

from conftest import BIN

URL_A = "redis://fleet:pw-of-the-cwd-file@127.0.0.1:6001/0"
URL_U = "redis://fleet:pw-of-the-user-file@127.0.0.1:6002/0"
URL_E = "redis://fleet:pw-of-the-env@127.0.0.1:6003/0"


@pytest.fixture
def dirs(tmp_path):
    """A working directory and a home directory (with its ~/.config), both empty."""
    cwd, home = tmp_path / "work", tmp_path / "home"
    cwd.mkdir()
    (home / ".config" / "fleet").mkdir(parents=True)
    return cwd, home


def _env(home: Path, **extra: str) -> dict:
    return {"HOME": str(home)} | extra


def test_nothing_anywhere_gives_defaults_and_says_where_it_looked(dirs):
    cwd, home = dirs
    s = settings.load(cwd, _env(home))
    assert s.config_file is None and s.redis_url == settings.Setting(None, "default")
    assert s.searched == (cwd / "fleet.toml", home / ".config" / "fleet" / "fleet.toml")
    assert s.insecure_secrets == settings.Setting(False, "default")


def test_the_users_config_directory_is_read_when_the_working_directory_has_none(dirs):
    cwd, home = dirs
    user = home / ".config" / "fleet" / "fleet.toml"
    user.write_text(f'# mine\nredis_url = "{URL_U}"\ninventory = "sites/hq.yml"\n')
    s = settings.load(cwd, _env(home))
    assert s.config_file == user
    assert s.redis_url == settings.Setting(URL_U, f"{user}:2")
    # relative to the file that names it, not to wherever the command runs
    assert s.inventory == settings.Setting(str(home / ".config" / "fleet" / "sites" / "hq.yml"), f"{user}:3")


def test_the_working_directory_wins_over_the_users_file_and_only_one_file_is_read(dirs):
    cwd, home = dirs
    (home / ".config" / "fleet" / "fleet.toml").write_text(f'redis_url = "{URL_U}"\ninventory = "user.yml"\n')
    (cwd / "fleet.toml").write_text(f'redis_url = "{URL_A}"\n')
    s = settings.load(cwd, _env(home))
    assert s.config_file == cwd / "fleet.toml"
    assert s.redis_url.value == URL_A
    assert s.inventory == settings.Setting(None, "default")    # not merged from the user's file


def test_xdg_config_home_moves_the_users_file(dirs, tmp_path):
    cwd, home = dirs
    xdg = tmp_path / "xdg"
    (xdg / "fleet").mkdir(parents=True)
    (xdg / "fleet" / "fleet.toml").write_text(f'redis_url = "{URL_U}"\n')
    (home / ".config" / "fleet" / "fleet.toml").write_text(f'redis_url = "{URL_A}"\n')
    s = settings.load(cwd, _env(home, XDG_CONFIG_HOME=str(xdg)))
    assert s.config_file == xdg / "fleet" / "fleet.toml" and s.redis_url.value == URL_U


def test_environment_variables_override_single_values(dirs):
    cwd, home = dirs
    (cwd / "fleet.toml").write_text(f'redis_url = "{URL_A}"\ninventory = "a.yml"\nsecrets_file = "s.yml"\n')
    s = settings.load(cwd, _env(home, FLEET_REDIS_URL=URL_E, FLEET_SECRETS_FILE="other/secrets.yml"))
    assert s.redis_url == settings.Setting(URL_E, "FLEET_REDIS_URL")
    assert s.secrets_file == settings.Setting(str(cwd / "other" / "secrets.yml"), "FLEET_SECRETS_FILE")
    assert s.inventory == settings.Setting(str(cwd / "a.yml"), f"{cwd / 'fleet.toml'}:2")   # the file's, untouched


@pytest.mark.parametrize("text, line, field, says", [
    ('redis_url = "redis://x"\nredis_ulr = "redis://y"\n', 2, "redis_ulr", "did you mean redis_url?"),
    ('inventory = 3\n', 1, "inventory", "must be a string; found int"),
    ('\ninsecure_secrets = "yes"\n', 2, "insecure_secrets", "must be true or false"),
    ('redis_url = "http://127.0.0.1:6379"\n', 1, "redis_url", "must start with redis://"),
    ('redis_url = "redis://x\n', 1, "", "not valid TOML"),
    ('inventory = "a.yml"\n[fleet\n', 2, "", "not valid TOML"),
])
def test_a_bad_file_names_its_line_and_key(dirs, text, line, field, says):
    cwd, home = dirs
    (cwd / "fleet.toml").write_text(text)
    with pytest.raises(FileError) as info:
        settings.load(cwd, _env(home))
    exc = info.value
    assert (exc.path, exc.line, exc.field) == (str(cwd / "fleet.toml"), line, field), str(exc)
    assert says in str(exc), str(exc)


def _fleet(args: list[str], cwd: Path, home: Path, **env: str) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if not k.startswith("FLEET_")}
    return subprocess.run([BIN / "fleet", *args], cwd=cwd, capture_output=True, text=True, timeout=60,
                          env=base | {"HOME": str(home), "XDG_CONFIG_HOME": str(home / ".config"), "COLUMNS": "200"} | env)


def test_config_show_prints_each_value_with_its_source_and_never_the_password(dirs):
    cwd, home = dirs
    user = home / ".config" / "fleet" / "fleet.toml"
    user.write_text(f'redis_url = "{URL_U}"\ninventory = "hq.yml"\n')
    res = _fleet(["config", "show", "--json"], cwd, home, FLEET_SECRETS_FILE="s.yml")
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    assert doc["config_file"] == str(user)
    assert doc["settings"] == {
        "redis_url": {"value": "redis://***@127.0.0.1:6002/0", "source": f"{user}:1"},
        "inventory": {"value": str(user.parent / "hq.yml"), "source": f"{user}:2"},
        "secrets_file": {"value": str(cwd / "s.yml"), "source": "FLEET_SECRETS_FILE"},
        "insecure_secrets": {"value": False, "source": "default"}}
    table = _fleet(["config", "show"], cwd, home, FLEET_REDIS_URL=URL_E)
    assert table.returncode == 0, table.stderr
    assert "pw-of" not in table.stdout + table.stderr
    line = next(ln for ln in table.stdout.splitlines() if "redis_url" in ln)
    assert "redis://***@127.0.0.1:6003/0" in line and "FLEET_REDIS_URL" in line, table.stdout
    assert f"config file: {user}" in table.stdout
    flagged = _fleet(["--insecure-secrets", "config", "show", "--json"], cwd, home)
    assert json.loads(flagged.stdout)["settings"]["insecure_secrets"] == {"value": True, "source": "--insecure-secrets"}


def test_config_show_on_a_broken_file_exits_2_naming_the_line(dirs):
    cwd, home = dirs
    (cwd / "fleet.toml").write_text('redis_url = "redis://h:6379/0"\ninventroy = "x.yml"\n')
    res = _fleet(["config", "show"], cwd, home)
    assert res.returncode == 2, (res.stdout, res.stderr)
    assert f"{cwd / 'fleet.toml'}:2: inventroy: unknown key (did you mean inventory?)" in res.stderr, res.stderr
    # every other command refuses the same way, before doing anything
    status = _fleet(["status"], cwd, home)
    assert status.returncode == 2 and "inventroy" in status.stderr, status.stderr


def test_config_init_writes_a_private_file_that_reads_back_and_refuses_to_overwrite(dirs):
    cwd, home = dirs
    res = _fleet(["config", "init", "--redis-url", URL_A, "--inventory", "lab/inventory.yml"], cwd, home)
    assert res.returncode == 0, res.stderr
    path = cwd / "fleet.toml"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    s = settings.load(cwd, _env(home))
    assert s.redis_url.value == URL_A and s.inventory.value == str(cwd / "lab" / "inventory.yml")
    assert "pw-of" not in res.stdout + res.stderr
    again = _fleet(["config", "init", "--redis-url", URL_U], cwd, home)
    assert again.returncode == 2 and "exists: pass --force" in again.stderr, again.stderr
    assert settings.load(cwd, _env(home)).redis_url.value == URL_A
    forced = _fleet(["config", "init", "--redis-url", URL_U, "--force"], cwd, home)
    assert forced.returncode == 0 and settings.load(cwd, _env(home)).redis_url.value == URL_U
    bad = _fleet(["config", "init", "--redis-url", "127.0.0.1:6379", "--force"], cwd, home)
    assert bad.returncode == 2 and "--redis-url: must start with redis://" in bad.stderr, bad.stderr


def test_config_init_force_replaces_a_broken_file(dirs):
    cwd, home = dirs
    (cwd / "fleet.toml").write_text("this is [not toml\n")
    res = _fleet(["config", "init", "--redis-url", URL_A, "--force"], cwd, home)
    assert res.returncode == 0, res.stderr
    assert settings.load(cwd, _env(home)).redis_url.value == URL_A


def test_the_configured_inventory_is_every_commands_default_and_the_environment_wins(dirs, tmp_path):
    """`--inventory` (and `inventory check`'s FILE) defaults to fleet.toml's; FLEET_INVENTORY over it; the option
    over both (the error names which file each run read)."""
    cwd, home = dirs
    (cwd / "fleet.toml").write_text('inventory = "from-file.yml"\n')
    for args in (["rollout", "run", "pb.yml", "--dry-run"], ["experiment", "run", "pb.yml"],
                 ["collector", "--site", "hq"], ["worker", "--site", "hq"], ["scheduler"], ["inventory", "check"]):
        res = _fleet(args, cwd, home)
        assert res.returncode == 2 and "Missing option" not in res.stderr, (args, res.stderr)
        if args[0] in ("rollout", "experiment"):
            (cwd / "pb.yml").write_text("kind: rollout\nname: x\nparams: {reg.1.server.1.expires: 120}\n"
                                        if args[0] == "rollout" else
                                        "kind: experiment\nname: x\nsite: hq\nsteps: [{name: w, wait: 1}]\n")
            res = _fleet(args, cwd, home)
        assert "from-file.yml" in res.stderr, (args, res.stderr)
    env = _fleet(["collector", "--site", "hq"], cwd, home, FLEET_INVENTORY="from-env.yml")
    assert "from-env.yml" in env.stderr and env.returncode == 2, env.stderr
    option = _fleet(["collector", "--site", "hq", "--inventory", "from-option.yml"], cwd, home,
                    FLEET_INVENTORY="from-env.yml")
    assert "from-option.yml" in option.stderr and option.returncode == 2, option.stderr


def test_version():
    from importlib.metadata import version

    res = subprocess.run([BIN / "fleet", "--version"], capture_output=True, text=True, timeout=30)
    assert res.returncode == 0 and res.stdout.strip() == f"fleet {version('soundpoint-fleet')}", res.stdout
