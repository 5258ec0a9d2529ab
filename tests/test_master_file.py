"""Fleet's edit of a site's master file: its own file first in CONFIG_FILES, every other byte as the site wrote it."""
from __future__ import annotations

import pytest

from fleet.phoneconf import polycom
from soundpoint import bootfiles

MAC = "0004f200106c"
OURS = f"{MAC}-fleet.cfg"

UC4 = b"""<?xml version="1.0" standalone="yes"?>
<!-- Default Master SIP Configuration File  <APPLICATION CONFIG_FILES="not-me.cfg"/> -->
<APPLICATION APP_FILE_PATH="sip.ld"   CONFIG_FILES="[PHONE_MAC_ADDRESS]-reg.cfg, site.cfg, features.cfg, sip-basic.cfg"
  MISC_FILES="" LOG_FILE_DIRECTORY="logs" OVERRIDES_DIRECTORY='overrides' CONTACTS_DIRECTORY="contacts"
  LICENSE_DIRECTORY="" USER_PROFILES_DIRECTORY="" CALL_LISTS_DIRECTORY="calls" COREFILE_DIRECTORY="">
  <APPLICATION_SPIP650 APP_FILE_PATH_SPIP650="sip-650.ld" CONFIG_FILES_SPIP650=""/>
  <APPLICATION_SPIP331 APP_FILE_PATH_SPIP331="" CONFIG_FILES_SPIP331="ip331.cfg,site.cfg"/>
</APPLICATION>
"""


def edit(data: bytes) -> bytes:
    return polycom.with_fleet_file("000000000000.cfg", data, OURS, MAC)


def test_only_config_files_changes_and_attribute_order_whitespace_quotes_comments_stay():
    out = edit(UC4)
    expected = UC4.replace(b'CONFIG_FILES="[PHONE', b'CONFIG_FILES="' + OURS.encode() + b", [PHONE", 1)
    expected = expected.replace(b'CONFIG_FILES_SPIP331="ip331.cfg', b'CONFIG_FILES_SPIP331="' + OURS.encode() + b",ip331.cfg")
    assert out == expected
    master = bootfiles.parse_master("x", out)
    assert master.config_files == [OURS, "[PHONE_MAC_ADDRESS]-reg.cfg", "site.cfg", "features.cfg", "sip-basic.cfg"]
    assert master.config_files_for("SoundPoint IP 650") == master.config_files    # empty model list: left empty
    assert master.config_files_for("SoundPoint IP 331") == [OURS, "ip331.cfg", "site.cfg"]
    assert master.children["APPLICATION_SPIP650"] == {"APP_FILE_PATH_SPIP650": "sip-650.ld", "CONFIG_FILES_SPIP650": ""}
    for attr in bootfiles.DIRECTORY_ATTRIBUTES + ("APP_FILE_PATH", "MISC_FILES"):
        assert master.attributes[attr] == bootfiles.parse_master("x", UC4).attributes[attr]


def test_sip2_template_list_gains_our_file_in_front():
    data = b'<APPLICATION APP_FILE_PATH="sip.ld" CONFIG_FILES="phone1.cfg, sip.cfg" MISC_FILES=""/>'
    assert edit(data) == data.replace(b'"phone1.cfg', f'"{OURS}, phone1.cfg'.encode())


def test_our_file_already_first_leaves_the_file_alone_and_the_edit_is_idempotent():
    once = edit(UC4)
    assert edit(once) == once
    macro = b'<APPLICATION CONFIG_FILES="[PHONE_MAC_ADDRESS]-fleet.cfg, sip.cfg"/>'
    assert edit(macro) == macro                     # the macro names our file for this phone


def test_our_file_listed_later_is_put_in_front_as_well():
    data = f'<APPLICATION CONFIG_FILES="sip.cfg, {OURS}"/>'.encode()
    assert bootfiles.parse_master("x", edit(data)).config_files == [OURS, "sip.cfg", OURS]


@pytest.mark.parametrize("data,expected", [
    (b'<APPLICATION APP_FILE_PATH="sip.ld"/>', f'<APPLICATION CONFIG_FILES="{OURS}" APP_FILE_PATH="sip.ld"/>'.encode()),
    (b'<APPLICATION CONFIG_FILES=""/>', f'<APPLICATION CONFIG_FILES="{OURS}"/>'.encode()),
    (b"<APPLICATION CONFIG_FILES=' sip.cfg'/>", f"<APPLICATION CONFIG_FILES=' {OURS}, sip.cfg'/>".encode()),
])
def test_missing_or_empty_config_files(data, expected):
    assert edit(data) == expected


def test_a_greater_than_sign_in_a_value_and_utf8_elsewhere_survive():
    data = '<?xml version="1.0" encoding="UTF-8"?>\n<!-- Zürich -->\n<APPLICATION MISC_FILES="a>b" CONFIG_FILES="sip.cfg"/>\n'.encode()
    assert edit(data) == data.replace(b'"sip.cfg"', f'"{OURS}, sip.cfg"'.encode())


@pytest.mark.parametrize("data,why", [
    (b"<APPLICATION CONFIG_FILES='x'", "not well-formed"),
    (b"<polycomConfig/>", "no APPLICATION"),
    (b'<!DOCTYPE x [<!ENTITY a "b">]><APPLICATION/>', "DTD"),
    (('<APPLICATION CONFIG_FILES="' + ", ".join(["f%04d.cfg" % i for i in range(185)]) + '"/>').encode(), "longer than 2047"),
])
def test_unusable_master_files_are_refused_with_the_file_named(data, why):
    with pytest.raises(polycom.MasterFileError, match=why) as err:
        edit(data)
    assert "000000000000.cfg" in str(err.value)


def test_render_phone_files_copies_the_default_master_into_the_per_phone_one():
    files = polycom.render_phone_files(MAC, {"reg.1.address": "1001"}, UC4, "000000000000.cfg")
    assert set(files) == {f"{MAC}.cfg", OURS}
    assert files[f"{MAC}.cfg"] == edit(UC4)
    assert bootfiles.parse_parameters(OURS, files[OURS]) == {"reg.1.address": "1001"}


def test_the_virtual_phone_reads_its_models_list_macros_and_override_files_as_a_real_one():
    from hil.config_files import parse_master

    master = parse_master("000000000000.cfg", edit(UC4))
    assert master.files_for(MAC, "SoundPoint IP 650") == [OURS, f"{MAC}-reg.cfg", "site.cfg", "features.cfg", "sip-basic.cfg"]
    assert master.files_for(MAC, "SoundPoint IP 331") == [OURS, "ip331.cfg", "site.cfg"]
    assert master.override_files(MAC) == [f"overrides/{MAC}-phone.cfg", f"overrides/{MAC}-web.cfg"]
    assert master.log_file_directory == "logs"
    assert parse_master("x", b'<APPLICATION CONFIG_FILES="a.cfg"/>').override_files(MAC) == [f"{MAC}-phone.cfg", f"{MAC}-web.cfg"]
