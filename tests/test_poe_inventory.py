"""PoE ports in the inventory and the rollout's power-cycle fallback as planned: bad input is refused at load with
the file, line and field; a phone that cannot be power-cycled is named before anything runs."""
import pytest

from conftest import SMALL_INVENTORY
from fleet.config import inventory, switch_drivers
from fleet.rollout import power_fallback
from fleet.rollout.playbook import Strategy
from soundpoint.yamlfile import FileError

SWITCHES = "    switches: [{name: poe1, address: 127.10.0.4, credentials: sw}]\n"


def _inv(tmp_path, poe: str = '{switch: poe1, port: "1.12"}', switches: str = SWITCHES, extra: str = ""):
    text = SMALL_INVENTORY.replace("    phones:\n", switches + "    phones:\n")
    text = text.replace("credentials: admin}", f"credentials: admin, poe: {poe}}}")
    path = tmp_path / "inv.yml"
    path.write_text(text + extra)
    (tmp_path / "secrets.yml").write_text("admin: {password: a}\nboot: {password: b}\nr: {password: c}\n"
                                          "sw: {username: fleet, password: k1, priv_password: k2}\n")
    return path


def test_a_phone_names_its_switch_and_group_dot_port(tmp_path):
    inv = inventory.load(_inv(tmp_path))
    site, phone = inv.sites[0], inv.sites[0].phones[0]
    assert phone.poe.index == (1, 12)
    sw = site.switch("poe1")
    assert (sw.driver, sw.port, sw.snmp_version) == ("snmp-poe", 161, "3")
    assert (("sites", 0, "switches", 0, "credentials"), "sw") in inv.credential_refs()


@pytest.mark.parametrize("poe,words", [
    ('{switch: poe2, port: "1.12"}', "no switch 'poe2'"),
    ('{switch: poe1, port: 1.12}', "must be quoted text"),
    ('{switch: poe1, port: 12}', "must be quoted text"),
    ('{switch: poe1, port: "12"}', "is not GROUP.PORT"),
    ('{switch: poe1, port: "0.3"}', "is not GROUP.PORT"),
    ('{switch: poe1, port: "1.2.3"}', "is not GROUP.PORT"),
    ('{switch: poe1}', "port"),
])
def test_a_bad_poe_port_is_an_error_naming_the_line_and_field(tmp_path, poe, words):
    with pytest.raises(FileError, match=words) as exc:
        inventory.load(_inv(tmp_path, poe))
    assert str(exc.value).startswith(f"{tmp_path / 'inv.yml'}:11: sites[0].phones[0].poe"), str(exc.value)


def test_a_phone_port_needs_a_switch_list(tmp_path):
    with pytest.raises(FileError, match="the site lists none"):
        inventory.load(_inv(tmp_path, switches=""))


def test_one_port_powers_one_phone_and_switch_names_are_unique(tmp_path):
    two = SMALL_INVENTORY.replace("    phones:\n", SWITCHES + "    phones:\n").replace(
        "credentials: admin}", 'credentials: admin, poe: {switch: poe1, port: "1.1"}}')
    two += '      - {mac: "0004f2000002", model: VVX 410, address: 127.0.0.3, credentials: admin, poe: {switch: poe1, port: "1.1"}}\n'
    path = tmp_path / "inv.yml"
    path.write_text(two)
    with pytest.raises(FileError, match="port 1.1 of switch poe1 already powers phones\\[0\\]"):
        inventory.load(path)
    path.write_text(SMALL_INVENTORY.replace("    phones:\n", "    switches: [{name: a, address: 127.0.0.9, credentials: "
                                            "sw}, {name: a, address: 127.0.0.8, credentials: sw}]\n    phones:\n"))
    with pytest.raises(FileError, match="switch a is listed twice"):
        inventory.load(path)


def test_an_unknown_switch_driver_lists_the_known_ones(tmp_path):
    path = _inv(tmp_path, switches="    switches: [{name: poe1, driver: cisco-poe, address: 127.10.0.4, credentials: sw}]\n")
    with pytest.raises(FileError, match="unknown switch driver 'cisco-poe'; known drivers: snmp-poe"):
        inventory.load(path)


def test_a_switch_driver_registered_at_run_time_is_accepted(tmp_path):
    switch_drivers.register(switch_drivers.SwitchDriver("test-poe", "tests.nowhere"))
    try:
        path = _inv(tmp_path, switches="    switches: [{name: poe1, driver: test-poe, address: 127.10.0.4, credentials: sw}]\n")
        assert inventory.load(path).sites[0].switches[0].driver == "test-poe"
    finally:
        switch_drivers.unregister("test-poe")


def test_the_switch_secret_must_exist_and_never_goes_into_a_phone_parameter(tmp_path):
    path = _inv(tmp_path)
    (tmp_path / "secrets.yml").write_text("admin: {password: a}\nboot: {password: b}\nr: {password: c}\n")
    with pytest.raises(FileError, match="no secret 'sw'"):
        inventory.check_secrets(inventory.load(path, keep_source=True))
    (tmp_path / "secrets.yml").write_text("admin: {password: a}\nboot: {password: b}\nr: {password: c}\nsw: {password: d}\n")
    secrets = inventory.Secrets(inventory.load(path))
    with pytest.raises(ValueError, match="login of a router or boot server"):
        secrets.resolve_param("reg.1.auth.password", "secret:sw")


def test_the_fallback_is_off_by_default_and_planned_only_for_phones_with_a_port(tmp_path):
    inv = inventory.load(_inv(tmp_path))
    with_port = inv.sites[0].phones[0]
    without = with_port.model_copy(update={"poe": None})
    assert power_fallback.planned(Strategy(), with_port) == (0.0, [])
    on = Strategy(power_cycle_fallback=True, power_off_s=3)
    assert power_fallback.planned(on, with_port) == (3.0, [])
    off_s, warnings = power_fallback.planned(on, without)
    assert off_s == 0.0 and "no poe port" in warnings[0]
    with pytest.raises(ValueError):
        Strategy(power_cycle_fallback=True, power_off_s=0)


def test_a_verify_window_no_longer_than_the_off_time_is_refused_naming_the_line(tmp_path):
    """verify.within counts from the reboot: a power-cycled phone would fail by construction."""
    from fleet.rollout import playbook

    path = tmp_path / "pb.yml"
    path.write_text("kind: rollout\nname: p\nparams: {reg.1.label: x}\n"
                    "strategy: {power_cycle_fallback: true, power_off_s: 60}\nverify:\n  within: 60\n")
    with pytest.raises(FileError) as err:
        playbook.load(path)
    assert "pb.yml:6:" in str(err.value) and "power_off_s (60 s)" in str(err.value), err.value
    path.write_text(path.read_text().replace("within: 60", "within: 75"))     # the switch's work too (15 s)
    with pytest.raises(FileError):
        playbook.load(path)
    path.write_text(path.read_text().replace("within: 75", "within: 76"))
    assert playbook.load(path).verify.within == 76


def _experiment(tmp_path, steps: str):
    path = tmp_path / "exp.yml"
    path.write_text("kind: experiment\nname: p\nsite: hq\nsteps:\n" + steps)
    return path


def test_a_power_step_is_checked_against_the_inventory(tmp_path):
    from fleet.experiment import playbook

    inv = inventory.load(_inv(tmp_path))
    ok = _experiment(tmp_path, "  - {name: blip, power: {phones: {macs: ['0004f2000001']}, off_s: 2}}\n")
    pb = playbook.load(ok)
    assert pb.steps[0].power.off_s == 2
    playbook.check_against(pb, inv, str(ok))
    bare = inventory.load(_inv(tmp_path, poe="null"))
    with pytest.raises(FileError, match="no poe port in the inventory: 0004f2000001") as exc:
        playbook.check_against(pb, bare, str(ok))
    assert str(exc.value).startswith(f"{ok}:5: steps[0].power.phones"), str(exc.value)
    with pytest.raises(FileError, match="off_s"):
        playbook.load(_experiment(tmp_path, "  - {name: blip, power: {off_s: 0}}\n"))
    with pytest.raises(FileError, match="0004f2000009 is not a phone of site hq"):
        bad = _experiment(tmp_path, "  - {name: blip, power: {phones: {macs: ['0004f2000009']}, off_s: 1}}\n")
        playbook.check_against(playbook.load(bad), inv, str(bad))
