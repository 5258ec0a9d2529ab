"""Firmware profiles (soundpoint.families): catalogue ranges from the guides, models per family, the inventory's
family fields, and the phone-control registry. Unit tests: no lab, no Redis."""
from __future__ import annotations

import socket

import pytest
import yaml

from fleet import phones
from fleet.config import inventory
from fleet.config import validate
from fleet.config.inventory import Credentials, Phone
from soundpoint.yamlfile import FileError
from soundpoint import families

UC5, UC4, SIP3, SIP2 = (families.get(n) for n in ("uc-5.x", "uc-4.0", "sip-3.x", "sip-2.x"))
S = "reg.1.server.1."


@pytest.mark.parametrize("fam,name,ok,bad", [
    (UC5, S + "registerRetry.maxTimeOut", ["60", "1800"], ["59", "1801"]),
    (UC5, S + "registerRetry.baseTimeOut", ["10", "120"], ["9", "121"]),
    (UC5, S + "failOver.failBack.timeout", ["0", "60", "65535"], ["1", "59", "65536"]),
    (UC5, S + "retryMaxCount", ["0", "20"], ["21", "-1"]),
    (UC5, S + "retryTimeOut", ["0", "65535"], ["65536"]),
    (UC5, S + "expires.lineSeize", ["0", "30"], ["-1"]),
    (UC5, S + "expires", ["10"], ["9"]),
    (SIP3, S + "expires", ["300"], ["299"]),
    (UC5, S + "failOver.reRegisterOn", ["0", "1"], ["2"]),
    (UC5, S + "failOver.onlySignalWithRegistered", ["0", "1"], ["yes"]),
    (UC4, "reg.1.outboundProxy.port", ["0", "5060"], ["70000"]),
    (SIP2, "voIpProt.SIP.outboundProxy.transport", ["UDPOnly"], ["udp"]),
    (UC4, "reg.2.server.1.useOutboundProxy", ["0", "1"], ["2"]),
    (SIP3, "voIpProt.SIP.requestValidation.1.method", ["digest", "source"], ["md5"]),
    (UC4, "device.set", ["0", "1"], ["2"]),
    (UC4, "device.syslog.facility", ["0", "23"], ["24"]),
    (UC4, "device.syslog.serverName.set", ["1"], ["on"]),
])
def test_catalogue_ranges_follow_the_guides(fam, name, ok, bad):
    for value in ok:
        assert fam.check(name, value) == value
    for value in bad:
        with pytest.raises(families.ParameterError, match=name.replace(".", r"\.")):
            fam.check(name, value)


def test_catalogue_defaults_and_names_corrected():
    assert UC5.lookup(S + "registerRetry.maxTimeOut").default == "60"
    assert UC5.lookup(S + "registerRetry.maxTimeout") is None          # the old misspelling
    assert UC5.lookup(S + "failOver.failRegistrationOn").default == "0"
    assert UC5.lookup(S + "failOver.reRegisterOn").default == "0"
    assert UC5.lookup(S + "failOver.onlySignalWithRegistered").default == "1"
    assert all(f.lookup("device.syslog.serverPort") is None for f in families.FAMILIES.values())


def test_failover_controls_exist_only_on_uc5():
    for fam in (SIP2, SIP3, UC4):
        with pytest.raises(families.ParameterError, match=f"not supported by firmware family {fam.name}"):
            fam.check(S + "failOver.failBack.mode", "duration")
    assert UC5.check(S + "failOver.failBack.mode", "duration") == "duration"
    # syslog by configuration only where the family has it (SIP 2.x/3.x: bootROM)
    with pytest.raises(families.ParameterError, match="not supported"):
        SIP3.check("device.syslog.serverName", "10.0.0.5")
    assert families.SYSLOG_BOOTROM in SIP3.interfaces and families.SYSLOG_CONFIG in UC4.interfaces


def test_index_ranges_are_bounded():
    # "x=1 to 4" (UC Software 4.1.6 guide, voIpProt.server.x.address): a fourth server is allowed, a fifth not
    assert UC5.check("voIpProt.server.4.address", "10.0.0.4") == "10.0.0.4"
    assert UC5.check("reg.1.server.4.expires", "60") == "60"
    with pytest.raises(families.ParameterError, match="servers are numbered 1 to 4"):
        UC5.check("reg.1.server.5.expires", "60")
    with pytest.raises(families.ParameterError, match="registrations are numbered 1 to 6"):
        SIP2.check("reg.7.address", "1007")
    with pytest.raises(ValueError, match="servers are numbered"):
        validate.param("voIpProt.server.0.port", "5060")


def test_interfaces_and_reboot_methods_per_family():
    assert [f.rest for f in (SIP2, SIP3, UC4, UC5)] == [False, False, False, True]
    assert families.STATE_POLLING not in SIP2.interfaces and families.STATE_POLLING in SIP3.interfaces
    assert SIP3.reboot_methods == ("check-sync",) and UC4.reboot_methods == ("check-sync", "web")
    assert UC5.default_reboot == "rest"


def test_old_family_names_are_refused_with_a_hint():
    with pytest.raises(families.FamilyError, match="use uc-4.0"):
        families.get("uc-4.x")
    with pytest.raises(families.FamilyError, match="oldest family is sip-2.x"):
        families.get("sip-1.x")
    with pytest.raises(ValueError, match="use uc-4.0"):
        validate.param("reg.1.address", "1001", "uc-4.x")


def test_models_per_family():
    assert UC4.runs_on("SoundPoint IP 650") and not UC5.runs_on("SoundPoint IP 650")
    assert not UC4.runs_on("SoundPoint IP 601") and SIP3.runs_on("SoundPoint IP 601")   # IP 601 stops at SIP 3.1
    assert not SIP3.runs_on("SoundPoint IP 300") and SIP2.runs_on("SoundPoint IP 300")  # IP 300 stops at SIP 2.1
    assert [f.name for f in families.families_for("VVX 410")] == ["uc-5.x"]


INV = """name: t
firmware_family: uc-5.x
sites:
  - name: hq
    gateway: 10.0.0.1
    boot_server: {url: "http://10.0.0.2/"}
    phones:
      - {mac: "0004f2000001", model: VVX 410, address: 10.0.0.10, credentials: admin}
      - {mac: "0004f2000002", model: SoundPoint IP 650, address: 10.0.0.11, credentials: admin}
"""


def test_inventory_putting_an_ip650_on_uc5_is_rejected_with_the_reason(tmp_path):
    path = tmp_path / "inv.yml"
    path.write_text(INV)
    with pytest.raises(FileError) as exc:
        inventory.load(path)
    assert str(exc.value) == (f"{path}:9: sites[0].phones[1].model: SoundPoint IP 650 cannot run UC Software 5.x "
                              "(VVX, Trio) (uc-5.x); it runs sip-2.x, sip-3.x, uc-4.0 (the fleet's firmware_family)")
    path.write_text(INV.replace("credentials: admin}\n", "credentials: admin, firmware_family: uc-4.0}\n")
                    .replace("model: VVX 410, address: 10.0.0.10, credentials: admin, firmware_family: uc-4.0",
                             "model: VVX 410, address: 10.0.0.10, credentials: admin"))
    inv = inventory.load(path)
    assert [p.family.name for p in inv.sites[0].phones] == ["uc-5.x", "uc-4.0"]
    assert [p.reboot_method for p in inv.sites[0].phones] == ["rest", "check-sync"]


def test_site_family_default_and_reboot_method_checked(tmp_path):
    doc = yaml.safe_load(INV)
    doc["sites"][0]["firmware_family"] = "uc-4.0"
    doc["sites"][0]["phones"][0]["firmware_family"] = "uc-5.x"
    doc["sites"][0]["phones"][1]["reboot"] = "web"
    path = tmp_path / "inv.yml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    phone = inventory.load(path).sites[0].phones[1]
    assert (phone.family.name, phone.reboot_method) == ("uc-4.0", "web")
    doc["sites"][0]["phones"][1]["reboot"] = "rest"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    with pytest.raises(FileError, match=r"phones\[1\]\.reboot: reboot rest is not available on uc-4.0"):
        inventory.load(path)


def test_a_site_parameter_one_family_lacks_is_carried_but_checked_where_known(tmp_path):
    doc = yaml.safe_load(INV.replace("credentials: admin}\n", "credentials: admin, firmware_family: uc-4.0}\n")
                         .replace("10.0.0.10, credentials: admin, firmware_family: uc-4.0", "10.0.0.10, credentials: admin"))
    doc["sites"][0]["params"] = {S + "failOver.failBack.mode": "duration"}
    path = tmp_path / "inv.yml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    inventory.load(path)        # the uc-4.0 phone ignores it; the VVX takes it
    doc["sites"][0]["params"] = {S + "registerRetry.baseTimeOut": 4}
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    with pytest.raises(FileError, match="out of range 10..120 for firmware family uc-5.x"):
        inventory.load(path)


def test_every_family_has_a_control_module():
    assert set(phones.BACKENDS) == set(families.NAMES)
    for name in families.NAMES:
        model = sorted(families.get(name).models)[0]
        ctl = phones.control(phones.PhoneAccess(Phone(mac="0004f2000001", model=model, address="127.0.0.1",
                                                      credentials="a", firmware_family=name), Credentials()))
        assert ctl.family.name == name


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("family", ["sip-2.x", "sip-3.x", "uc-4.0", "uc-5.x"])
def test_call_check_fails_closed(family):
    """No answer (nothing listens) or a family that cannot tell: "unknown", which never allows a reboot."""
    model = sorted(families.get(family).models)[0]
    phone = Phone(mac="0004f2000001", model=model, address="127.0.0.1", http_port=_closed_port(), credentials="a",
                  firmware_family=family)
    check = phones.control(phones.PhoneAccess(phone, Credentials("u", "p"))).call_check()
    assert check.state == "unknown" and not check.may_reboot and check.reason


def test_lab_inventory_export_gives_each_model_a_family_it_runs():
    from hil.inventory_export import fit_to_families

    inv = {"firmware_family": "uc-5.x", "sites": [{"params": {S + "registerRetry.baseTimeOut": "3",
                                                              S + "expires": "12", "device.syslog.serverName": "x"},
                                                   "phones": [{"model": "SoundPoint IP 650"}, {"model": "VVX 410"}]}]}
    site = fit_to_families(inv)["sites"][0]
    assert [p.get("firmware_family") for p in site["phones"]] == ["uc-4.0", None]
    assert site["params"] == {S + "registerRetry.baseTimeOut": "10", S + "expires": "12", "device.syslog.serverName": "x"}
