"""Issue 19: a misspelt secret reference is answered with a suggestion only among secrets nobody else uses and of
the same kind; never another user's SIP password or another device's login."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from fleet.config import inventory
from soundpoint.yamlfile import FileError


def _inventory(tmp: Path, secrets: dict, refs: list[str], admin: str = "admin") -> Path:
    (tmp / "secrets.yml").write_text(yaml.safe_dump(secrets))
    (tmp / "secrets.yml").chmod(0o600)
    phones = [{"mac": f"0004f200000{i + 1}", "model": "VVX 410", "address": f"127.0.0.{i + 2}", "credentials": admin,
               "params": {"reg.1.address": f"10{i + 1:02d}", "reg.1.auth.password": f"secret:{ref}"}}
              for i, ref in enumerate(refs)]
    doc = {"name": "t", "secrets_file": "secrets.yml", "firmware_family": "uc-5.x",
           "sites": [{"name": "hq", "gateway": "127.0.0.1", "boot_server": {"url": f"file://{tmp}/"},
                      "phones": phones}]}
    path = tmp / "inventory.yml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def _refused(path: Path) -> str:
    inv = inventory.load(path, keep_source=True)
    with pytest.raises(FileError) as caught:
        inventory.check_secrets(inv)
    return str(caught.value)


ADMIN = {"username": "Polycom", "password": "a"}


def test_another_users_sip_secret_is_never_suggested(tmp_path):
    """sip_1003 is missing; sip_1001 is the first phone's own SIP secret: naming it would invite pasting it in."""
    said = _refused(_inventory(tmp_path, {"admin": ADMIN, "sip_1001": {"password": "s1"}}, ["sip_1001", "sip_1003"]))
    assert "no secret 'sip_1003'" in said and "did you mean" not in said and "sip_1001" not in said, said


def test_an_unused_secret_of_the_same_kind_is_suggested(tmp_path):
    said = _refused(_inventory(tmp_path, {"admin": ADMIN, "sip_1001": {"password": "s1"}, "sip_1002": {"password": "s2"}},
                               ["sip_1001", "sip_1020"]))
    assert said.endswith("(did you mean sip_1002?)"), said


def test_a_login_is_never_suggested_for_a_phone_parameter(tmp_path):
    """An unused login (a username with it) is not what a SIP password reference means."""
    said = _refused(_inventory(tmp_path, {"admin": ADMIN, "sip_1001": {"password": "s1"},
                                          "sip_100": {"username": "root", "password": "r"}}, ["sip_1001", "sip_10"]))
    assert "did you mean" not in said, said


def test_a_misspelt_login_is_pointed_to_the_unused_login(tmp_path):
    said = _refused(_inventory(tmp_path, {"admin": ADMIN, "sip_1001": {"password": "s1"}}, ["sip_1001"], admin="admni"))
    assert "no secret 'admni'" in said and said.endswith("(did you mean admin?)"), said
