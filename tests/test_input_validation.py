"""Bad input gets a clear error naming file, line and field; nothing else is needed to check it."""
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import SMALL_INVENTORY
from fleet.config import inventory
from fleet.experiment import playbook
from soundpoint.yamlfile import FileError
from hil import labfile
from hil.config_files import ConfigFileError, parse_master, parse_parameters

INV = SMALL_INVENTORY + '      - {mac: "0004f2zz0002", model: VVX 410, address: 127.0.0.3, credentials: admin}\n'


def test_inventory_error_names_file_line_and_field(tmp_path):
    path = tmp_path / "inv.yml"
    path.write_text(INV)
    with pytest.raises(FileError) as exc:
        inventory.load(path)
    assert str(exc.value).startswith(f"{path}:11: sites[0].phones[1].mac")


def test_duplicate_mac_is_rejected(tmp_path):
    path = tmp_path / "inv.yml"
    path.write_text(INV.replace("0004f2zz0002", "0004F2000001"))
    with pytest.raises(FileError, match="listed twice"):
        inventory.load(path)


def test_secrets_never_show_in_repr(tmp_path):
    (tmp_path / "secrets.yml").write_text("admin: {username: Polycom, password: s3cr3t-XYZ}\n")
    path = tmp_path / "inv.yml"
    path.write_text(INV.replace("0004f2zz0002", "0004f2000002"))
    inv = inventory.load(path)
    creds = inventory.Secrets(inv).credentials("admin")
    assert creds.password == "s3cr3t-XYZ"
    assert "s3cr3t" not in repr(creds) and "s3cr3t" not in str(creds) and "s3cr3t" not in f"{creds}"


def test_playbook_needs_a_known_step_kind_and_names_the_line(tmp_path):
    path = tmp_path / "pb.yml"
    path.write_text("kind: experiment\nname: x\nsite: hq\nsteps:\n  - {name: a, wait: 1}\n  - {name: b, unplug: true}\n")
    with pytest.raises(FileError) as exc:
        playbook.load(path)
    assert f"{path}:6: steps[1]" in str(exc.value) and "expect, outage, restore, call, wait" in str(exc.value)


def test_playbook_outage_must_be_restored_in_order(tmp_path):
    path = tmp_path / "pb.yml"
    path.write_text("kind: experiment\nname: x\nsite: hq\nsteps:\n  - {name: r, restore: true}\n")
    with pytest.raises(FileError, match="restore without an outage"):
        playbook.load(path)


def test_broken_yaml_reports_its_line(tmp_path):
    path = tmp_path / "pb.yml"
    path.write_text("kind: experiment\nname: [x\n")
    with pytest.raises(FileError, match=r"pb.yml:\d+: not valid YAML"):
        playbook.load(path)


def test_lab_file_unknown_model(tmp_path):
    path = tmp_path / "lab.yml"
    path.write_text("name: l\nsites:\n  - name: a\n    phones: {count: 1, models: [IP 9999]}\n    servers: [{address: provider}]\n")
    with pytest.raises(FileError, match=r"lab.yml:4: sites\[0\].phones.models"):
        labfile.load(path)


@settings(max_examples=150, deadline=None)
@given(st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=8),
                    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=6), c, max_size=3), max_leaves=12))
def test_any_yaml_document_gives_a_file_error_or_a_lab(tmp_path_factory, doc):
    path = tmp_path_factory.mktemp("h") / "lab.yml"
    path.write_text(yaml.safe_dump({"name": "l", "sites": doc}))
    try:
        labfile.load(path)
    except FileError as exc:
        assert str(exc).startswith(str(path))


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_config_xml_garbage_gives_config_file_error(data):
    for parse in (parse_master, parse_parameters):
        try:
            parse("f.cfg", data)
        except ConfigFileError as exc:
            assert str(exc).startswith("f.cfg")


def test_config_xml_with_entities_is_refused():
    with pytest.raises(ConfigFileError, match="DTDs"):
        parse_parameters("f.cfg", b'<!DOCTYPE a [<!ENTITY x "y">]><a b.c="&x;"/>')
