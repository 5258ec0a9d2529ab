"""A secrets file its group or others can read is refused (exit 2, naming the file, its mode and the fix), as ssh
refuses such a key; `--insecure-secrets` or `insecure_secrets = true` in fleet.toml accepts it knowingly. The lab
writes its secrets file 0600. A fleet.toml `secrets_file` replaces the inventory's."""
from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest
import yaml

from fleet.config import secrets_mode

from conftest import BIN, SMALL_INVENTORY


def _site(tmp_path: Path, mode: int = 0o644) -> Path:
    (tmp_path / "inv.yml").write_text(SMALL_INVENTORY)
    secrets = tmp_path / "secrets.yml"
    secrets.write_text("".join(f"{n}: {{username: u, password: pw-{n}}}\n" for n in ("boot", "r", "admin")))
    secrets.chmod(mode)
    (tmp_path / "home").mkdir(exist_ok=True)
    return secrets


def _fleet(args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if not k.startswith("FLEET_")}
    base |= {"HOME": str(cwd / "home"), "XDG_CONFIG_HOME": str(cwd / "home" / ".config"), "COLUMNS": "250"}
    return subprocess.run([BIN / "fleet", *args], cwd=cwd, env=base | env, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("mode, who", [(0o644, "readable by its group and others"), (0o604, "readable by others"),
                                       (0o640, "readable by its group"), (0o620, "accessible by its group")])
def test_modes_with_any_group_or_other_bit_are_insecure(tmp_path, mode, who):
    secrets = _site(tmp_path, mode)
    assert secrets_mode.insecure(secrets) == (f"secrets file {secrets} is {who} (mode {mode:04o}): chmod 600 {secrets}, "
                                              "or pass --insecure-secrets")


def test_owner_only_modes_are_fine(tmp_path):
    for mode in (0o600, 0o400):
        assert secrets_mode.insecure(_site(tmp_path, mode)) is None


@pytest.mark.parametrize("args", [["inventory", "check", "inv.yml"],
                                  ["rollout", "run", "pb.yml", "--inventory", "inv.yml", "--dry-run"],
                                  ["worker", "--inventory", "inv.yml", "--site", "hq"],
                                  ["collector", "--inventory", "inv.yml", "--site", "hq"]],
                         ids=lambda a: " ".join(a[:2]))
def test_a_world_readable_secrets_file_is_refused_and_the_flag_accepts_it(tmp_path, args):
    secrets = _site(tmp_path)
    (tmp_path / "pb.yml").write_text("kind: rollout\nname: x\nparams: {reg.1.server.1.address: voip.example}\n")
    res = _fleet(args, tmp_path)
    assert res.returncode == 2, (res.stdout, res.stderr)
    assert f"secrets file {secrets} is readable by its group and others (mode 0644): chmod 600 {secrets}, or pass " \
           "--insecure-secrets" in res.stderr, res.stderr
    assert "pw-" not in res.stdout + res.stderr
    if args[0] in ("worker", "collector"):
        return        # accepted, they would go on to need Redis: the other two show the acceptance
    accepted = _fleet(["--insecure-secrets", *args], tmp_path)
    assert accepted.returncode == 0, (accepted.stdout, accepted.stderr)


def test_the_config_key_accepts_and_chmod_600_is_the_fix(tmp_path):
    secrets = _site(tmp_path)
    (tmp_path / "fleet.toml").write_text("insecure_secrets = true\n")
    assert _fleet(["inventory", "check", "inv.yml"], tmp_path).returncode == 0
    (tmp_path / "fleet.toml").unlink()
    assert _fleet(["inventory", "check", "inv.yml"], tmp_path).returncode == 2
    secrets.chmod(0o600)
    res = _fleet(["inventory", "check", "inv.yml"], tmp_path)
    assert res.returncode == 0 and "valid" in res.stdout, res.stderr


def test_the_configured_secrets_file_replaces_the_inventorys(tmp_path):
    _site(tmp_path, 0o600)
    mine = tmp_path / "mine.yml"
    mine.write_text("boot: {password: x}\nr: {password: x}\n")       # no `admin`: the inventory names it
    mine.chmod(0o600)
    (tmp_path / "fleet.toml").write_text('secrets_file = "mine.yml"\n')
    res = _fleet(["inventory", "check", "inv.yml"], tmp_path)
    assert res.returncode == 2 and f"no secret 'admin' in the secrets file {mine}" in res.stderr, res.stderr
    mine.write_text("boot: {password: x}\nr: {password: x}\nadmin: {password: x}\n")
    assert _fleet(["inventory", "check", "inv.yml"], tmp_path).returncode == 0
    mine.chmod(0o644)          # the one in force is the one checked
    res = _fleet(["inventory", "check", "inv.yml"], tmp_path)
    assert res.returncode == 2 and f"secrets file {mine} is readable" in res.stderr, res.stderr
    (tmp_path / "fleet.toml").write_text('secrets_file = "gone.yml"\n')
    res = _fleet(["inventory", "check", "inv.yml"], tmp_path)
    assert res.returncode == 2 and f"{tmp_path / 'fleet.toml'}:1: secrets_file: {tmp_path / 'gone.yml'} not found" \
        in res.stderr, res.stderr


def test_the_lab_writes_its_secrets_file_for_the_owner_only(tmp_path):
    from hil import inventory_export

    old = tmp_path / "secrets.yml"
    old.write_text("x: {password: y}\n")
    old.chmod(0o644)                   # a state directory reused: the file is made private again
    inventory_export.write(tmp_path / "inventory.yml", tmp_path, {"name": "lab"}, {"admin": {"password": "z"}})
    assert stat.S_IMODE(old.stat().st_mode) == 0o600
    assert yaml.safe_load(old.read_text()) == {"admin": {"password": "z"}}
