"""The checks fleet and the lab share live in soundpoint (values, catalogue, strict) and say the same words.

fleet.config.validate.param adds only fleet's placeholders on top of soundpoint.catalogue.param; the lab file,
the inventory and both playbooks are read by models built on the one soundpoint.strict.Strict.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest
from pydantic import ValidationError

from fleet.config import validate
from fleet.config.inventory import Inventory
from fleet.experiment.playbook import ExperimentPlaybook
from fleet.rollout.playbook import RolloutPlaybook
from hil.labfile import LabFile, ServerSpec
from soundpoint import catalogue, values
from soundpoint.strict import Strict
from soundpoint.yamlfile import FieldError

ROOT = Path(__file__).resolve().parent.parent


def _outcome(check, *args):
    try:
        return ("ok", check(*args))
    except ValueError as exc:
        return ("error", str(exc))


PARAMS = [
    ("reg.1.server.1.expires", "3600", "uc-5.x"),
    ("reg.1.server.1.expires", 3600, None),
    ("reg.1.server.1.expires", "60", "sip-3.x"),            # below the family's minimum
    ("reg.1.server.1.expires", "６０", "uc-5.x"),            # full-width digits
    ("reg.1.server.1.expirse", "60", "uc-5.x"),             # a typo
    ("reg.1.server.1.failOver.failBack.mode", "duration", "sip-2.x"),
    ("reg.1.server.1.failOver.failBack.mode", "sometimes", "uc-5.x"),
    ("reg.1.server.1.expires", "60", "uc-4.x"),             # an old family name
    ("reg.1.server.1.expires", True, "uc-5.x"),
    (7, "1", None),
    ("reg.99.address", "1001", "sip-2.x"),                  # an index past the family's range
    ("reg.1.label", "Front\x07desk", "uc-5.x"),
    ("reg.1.label", "secret:router", "uc-5.x"),             # a reference outside a secret parameter
    ("reg.1.auth.password", "secret:sip_1001", "uc-5.x"),
    ("reg.1.auth.password", "env:", "uc-5.x"),
    ("reg.1.label", "{site.name}", "uc-5.x"),               # braces where no placeholders are allowed
    ("reg.1.server.1.address", "bad host!", "uc-5.x"),
    ("reg.1.server.1.address", "voip.example", "uc-5.x"),
]


@pytest.mark.parametrize("name,value,family", PARAMS)
def test_fleet_and_the_lab_check_a_parameter_alike(name, value, family):
    """Without placeholders fleet's check is the catalogue's: the same value back, or the same words."""
    assert _outcome(validate.param, name, value, family) == _outcome(catalogue.param, name, value, family)


def test_only_fleets_check_knows_placeholders():
    assert validate.param("reg.1.label", "{site.name} desk", "uc-5.x", allow_placeholders=True) == "{site.name} desk"
    with pytest.raises(ValueError, match="braces are not allowed here"):
        catalogue.param("reg.1.label", "{site.name} desk", "uc-5.x")


def test_a_list_check_names_the_bad_item_by_its_index():
    assert values.each(["00:04:F2:00:10:6C", "0004f200106d"], values.mac) == ["0004f200106c", "0004f200106d"]
    with pytest.raises(FieldError, match="not a MAC address") as exc:
        values.each(["0004f200106c", "nope"], values.mac)
    assert exc.value.loc == (1,)
    assert values.each("not a list", values.mac) == "not a list"


def test_host_and_port_checks_keep_their_words():
    assert values.hostport("[::1]:5060") == ("::1", 5060)
    with pytest.raises(ValueError, match="must be host:port \\(port required\\)"):
        values.hostport("voip.example", "provider")
    with pytest.raises(ValueError, match="is not a valid IP address"):
        values.host("10.1.2.300")


@pytest.mark.parametrize("model", [LabFile, Inventory, RolloutPlaybook, ExperimentPlaybook])
def test_every_input_file_is_read_with_the_one_strict_model(model):
    assert issubclass(model, Strict)
    assert model.model_config["extra"] == "forbid" and model.model_config["strict"] and model.model_config["frozen"]


def test_strict_refuses_unknown_keys_coercion_and_infinity_and_is_frozen():
    class Timer(Strict):
        seconds: float
        count: int = 1

    with pytest.raises(ValidationError, match="Extra inputs"):
        Timer(seconds=1.0, secs=2)
    with pytest.raises(ValidationError):
        Timer(seconds=1.0, count="5")
    with pytest.raises(ValidationError):
        Timer(seconds=float("inf"))
    with pytest.raises(ValidationError, match="frozen"):
        Timer(seconds=1.0).count = 2
    # the lab's one alias keeps working by both names
    assert ServerSpec(address="provider", register=0).register_ == ServerSpec(address="provider", register_=0).register_ == 0


def test_strict_is_defined_once():
    """No module in fleet/, hil/ or soundpoint/ defines its own `Strict` besides soundpoint.strict."""
    defined = [str(p.relative_to(ROOT)) for top in ("fleet", "hil", "soundpoint") for p in (ROOT / top).rglob("*.py")
               if any(isinstance(n, ast.ClassDef) and n.name == "Strict" for n in ast.walk(ast.parse(p.read_text())))]
    assert defined == ["soundpoint/strict.py"], defined
