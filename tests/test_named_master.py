"""The master file named in the boot-server address (ftp://host/site.cfg): inventory field, lookup order, edit, backups.

SIP 2.2/3.0/3.1 admin guides, appendix A "Master Configuration Files": a
master named in the boot-server address is read first ("must end with .cfg
and be at least five characters long"), then `<MAC>.cfg`, then
`000000000000.cfg`. Before this field fleet read only the last two, so on such
a site its `<MAC>.cfg` was never read by the phone.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from fleet.config import inventory
from fleet.rollout import record_check as plan_check
from fleet.phoneconf import polycom
from fleet.rollout import backups as rollout_backups
from fleet.sites import files as site_files
from fleet.drivers.publish import open_publisher
from fleet.config.inventory import Credentials
from soundpoint import bootfiles
from soundpoint.yamlfile import FileError

MAC = "0004f2000001"
NAMED = b'<?xml version="1.0" standalone="yes"?>\n<APPLICATION APP_FILE_PATH="sip.ld" CONFIG_FILES="[PHONE_MAC_ADDRESS]-reg.cfg, site.cfg"/>\n'


def inventory_file(tmp: Path, boot_server: dict) -> Path:
    path = tmp / "inventory.yml"
    path.write_text(yaml.safe_dump({
        "name": "unit", "firmware_family": "uc-5.x",
        "sites": [{"name": "hq", "gateway": "10.0.0.1", "boot_server": boot_server, "phones": []}]}, sort_keys=False))
    return path


def test_the_inventory_takes_a_master_file_name_for_the_boot_server(tmp_path):
    inv = inventory.load(inventory_file(tmp_path, {"url": "ftp://10.0.0.3/", "master_file": "campus.cfg"}))
    assert inv.site("hq").boot_server.master_file == "campus.cfg"


@pytest.mark.parametrize("name,why", [
    ("campus.txt", "does not end in .cfg"), (".cfg", "shorter than 5"), ("sub/dir.cfg", "plain file name"),
    ("ftp://x/a.cfg", "plain file name"),
])
def test_a_bad_master_file_name_is_refused_naming_file_line_and_field(tmp_path, name, why):
    with pytest.raises(FileError, match=rf"inventory\.yml:\d+: sites\[0\]\.boot_server\.master_file: .*{why}"):
        inventory.load(inventory_file(tmp_path, {"url": "ftp://10.0.0.3/", "master_file": name}))


@pytest.mark.parametrize("url,directory", [
    ("ftp://10.0.0.3/dir/campus.cfg", "ftp://10.0.0.3/dir/"), ("ftp://10.0.0.3/campus.cfg", "ftp://10.0.0.3/"),
    ("http://10.0.0.3:8080/p/campus.cfg", "http://10.0.0.3:8080/p/"), ("sftp://10.0.0.3/srv/campus.cfg", "sftp://10.0.0.3/srv/"),
    ("file:///srv/tftp/campus.cfg", "file:///srv/tftp/"),
])
def test_a_boot_address_naming_its_master_gives_publishers_the_directory(tmp_path, url, directory):
    """Before: the url was kept whole and FtpPublisher took `/dir/campus.cfg` as its directory (the lab split it)."""
    for form in ({"url": url}, {"url": url, "master_file": "campus.cfg"}):
        boot = inventory.load(inventory_file(tmp_path, form)).site("hq").boot_server
        assert (boot.url, boot.master_file) == (directory, "campus.cfg")
        assert bootfiles.split_boot_address(url) == (boot.url, boot.master_file)   # the lab's reading of the address


def test_a_master_file_that_conflicts_with_the_boot_address_is_refused_naming_file_line_and_field(tmp_path):
    with pytest.raises(FileError, match=r"inventory\.yml:\d+: sites\[0\]\.boot_server\.master_file: 'other\.cfg' "
                                        r"conflicts with the url, which names 'campus\.cfg'"):
        inventory.load(inventory_file(tmp_path, {"url": "ftp://10.0.0.3/campus.cfg", "master_file": "other.cfg"}))


def test_a_site_whose_boot_address_names_its_master_publishes_into_the_directory_and_edits_that_master(tmp_path):
    boot = tmp_path / "boot"
    boot.mkdir()
    (boot / "campus.cfg").write_bytes(NAMED)
    (boot / f"{MAC}.cfg").write_bytes(b'<APPLICATION CONFIG_FILES="old.cfg"/>')
    server = inventory.load(inventory_file(tmp_path, {"url": f"file://{boot}/campus.cfg"})).site("hq").boot_server
    pub = open_publisher(server.url, Credentials())     # before: the publisher refused campus.cfg as its directory
    try:
        pf = site_files.phone_files(pub, server.url, MAC, {"reg.1.address": "1001"},
                                    lambda u: open_publisher(u, Credentials()), server.master_file or "")
        for name, data in pf.files.items():
            pub.write(name, data)
    finally:
        pub.close()
    assert pf.master_from == "campus.cfg" and pf.shared_master
    assert sorted(p.name for p in boot.iterdir()) == sorted(["campus.cfg", f"{MAC}.cfg", f"{MAC}-fleet.cfg"])
    assert (boot / "campus.cfg").read_bytes().startswith(NAMED.split(b'CONFIG_FILES="')[0])
    assert b'CONFIG_FILES="[PHONE_MAC_ADDRESS]-fleet.cfg, ' in (boot / "campus.cfg").read_bytes()
    assert (boot / f"{MAC}.cfg").read_bytes() == b'<APPLICATION CONFIG_FILES="old.cfg"/>'
    assert plan_check.file_names(MAC, server.master_file) == {f"{MAC}.cfg", f"{MAC}-fleet.cfg", "campus.cfg"}


def test_the_lookup_order_and_the_boot_address_split():
    assert bootfiles.master_order(MAC, "campus.cfg") == ("campus.cfg", f"{MAC}.cfg", "000000000000.cfg")
    assert bootfiles.master_order(MAC) == (f"{MAC}.cfg", "000000000000.cfg")
    assert bootfiles.split_boot_address("ftp://u:p@h:21/dir/campus.cfg") == ("ftp://u:p@h:21/dir/", "campus.cfg")
    assert bootfiles.split_boot_address("ftp://h/dir/") == ("ftp://h/dir/", "")
    assert bootfiles.split_boot_address("http://h.cfg") == ("http://h.cfg", "")


def files_for(boot: Path, named: str) -> site_files.PhoneFiles:
    url = f"file://{boot}/"
    pub = open_publisher(url, Credentials())
    try:
        return site_files.phone_files(pub, url, MAC, {"reg.1.address": "1001"},
                                      lambda u: open_publisher(u, Credentials()), named)
    finally:
        pub.close()


def test_the_named_master_wins_over_the_phones_own_and_is_edited_in_place_with_the_mac_macro(tmp_path):
    (tmp_path / "campus.cfg").write_bytes(NAMED)
    (tmp_path / f"{MAC}.cfg").write_bytes(b'<APPLICATION CONFIG_FILES="old.cfg"/>')
    pf = files_for(tmp_path, "campus.cfg")
    assert pf.master_from == "campus.cfg" and pf.shared_master and not pf.creates_master
    assert set(pf.files) == {"campus.cfg", f"{MAC}-fleet.cfg"}       # <MAC>.cfg is not read by the phone: untouched
    assert pf.files["campus.cfg"] == NAMED.replace(b'CONFIG_FILES="', b'CONFIG_FILES="[PHONE_MAC_ADDRESS]-fleet.cfg, ')
    master = bootfiles.parse_master("campus.cfg", pf.files["campus.cfg"])
    assert [bootfiles.expand(f, MAC) for f in master.config_files][:1] == [f"{MAC}-fleet.cfg"]
    again = polycom.with_fleet_file("campus.cfg", pf.files["campus.cfg"], f"{MAC}-fleet.cfg", MAC, polycom.SHARED_ENTRY)
    assert again == pf.files["campus.cfg"]                            # idempotent: a second phone changes nothing


def test_a_named_master_missing_from_the_server_falls_back_as_the_phone_does(tmp_path):
    (tmp_path / "000000000000.cfg").write_bytes(b'<APPLICATION CONFIG_FILES="sip.cfg"/>')
    pf = files_for(tmp_path, "campus.cfg")
    assert pf.master_from == "000000000000.cfg" and not pf.shared_master and set(pf.files) == {f"{MAC}.cfg", f"{MAC}-fleet.cfg"}
    with pytest.raises(polycom.MasterFileError, match=f"neither campus.cfg, {MAC}.cfg nor 000000000000.cfg"):
        (tmp_path / "empty").mkdir()
        files_for(tmp_path / "empty", "campus.cfg")


def test_the_named_master_is_one_of_the_phones_files_only_when_the_inventory_names_it():
    assert plan_check.file_names(MAC, "campus.cfg") == {f"{MAC}.cfg", f"{MAC}-fleet.cfg", "campus.cfg"}
    assert plan_check.file_names(MAC) == {f"{MAC}.cfg", f"{MAC}-fleet.cfg"}
    with pytest.raises(plan_check.PlanRefused, match="campus.cfg"):
        plan_check._backups(MAC, {"backed_up:campus.cfg": "yes"})


def test_the_shared_masters_one_backup_is_removed_once_and_kept_for_a_failed_rollback(tmp_path):
    for name in ("campus.cfg.before-r1", f"{MAC}-fleet.cfg.before-r1"):
        (tmp_path / name).write_bytes(b"x")
    pub = open_publisher(f"file://{tmp_path}/", Credentials())
    try:
        failed = {MAC: {"state": "rollback_failed", "backed_up:campus.cfg": "yes"},
                  "0004f2000002": {"state": "rolled_back", "backed_up:campus.cfg": "same"}}
        assert rollout_backups.remove(pub, "r1", failed, "campus.cfg") == (0, 1)
        assert (tmp_path / "campus.cfg.before-r1").exists()
        done = {MAC: {"state": "verified", "backed_up:campus.cfg": "yes", f"backed_up:{MAC}-fleet.cfg": "yes"}}
        assert rollout_backups.remove(pub, "r1", done, "campus.cfg") == (2, 0)
        assert not list(tmp_path.glob("*.before-r1"))
    finally:
        pub.close()


def test_the_probe_reads_the_named_master_and_says_when_the_phones_fall_back(tmp_path):
    from fleet.sites.probe import check_boot_server

    boot = tmp_path / "boot"
    boot.mkdir()
    inv = inventory.load(inventory_file(tmp_path, {"url": f"file://{boot}/", "master_file": "campus.cfg"}))
    row = check_boot_server(inv.site("hq"), None, 2.0)      # nothing there a phone would read
    assert not row.ok and row.detail.startswith(f"no <MAC>.cfg nor master file at file://{boot}/: is the boot "
                                                "server path right? (looked for campus.cfg and 000000000000.cfg")
    (boot / bootfiles.DEFAULT_MASTER).write_bytes(NAMED)
    row = check_boot_server(inv.site("hq"), None, 2.0)
    assert row.ok and "no campus.cfg there: phones fall back to <MAC>.cfg" in row.detail
    (boot / "campus.cfg").write_bytes(NAMED)
    row = check_boot_server(inv.site("hq"), None, 2.0)
    assert row.ok and row.detail == f"read campus.cfg, the master named in the boot-server address ({len(NAMED)} bytes)"


def test_the_dry_run_survey_marks_a_shared_master_and_warns_where_the_mac_macro_is_unconfirmed(tmp_path):
    from types import SimpleNamespace

    boot = tmp_path / "boot"
    boot.mkdir()
    (boot / "campus.cfg").write_bytes(NAMED)
    path = tmp_path / "inventory.yml"
    path.write_text(yaml.safe_dump({
        "name": "unit", "secrets_file": "secrets.yml",
        "sites": [{"name": "hq", "gateway": "10.0.0.1",
                   "boot_server": {"url": f"file://{boot}/", "master_file": "campus.cfg"},
                   "phones": [{"mac": MAC, "model": "VVX 410", "firmware_family": "uc-5.x", "address": "10.0.1.2",
                               "credentials": "admin"},
                              {"mac": "0004f2000002", "model": "SoundPoint IP 650", "firmware_family": "sip-3.x",
                               "address": "10.0.1.3", "credentials": "admin"}]}]}))
    (tmp_path / "secrets.yml").write_text(yaml.safe_dump({"admin": {"username": "Polycom", "password": "456"}}))
    (tmp_path / "secrets.yml").chmod(0o600)
    inv = inventory.load(path)
    planned = [SimpleNamespace(mac=m, site="hq", params={"reg.1.address": "1001"}) for m in (MAC, "0004f2000002")]
    found = site_files.survey(inv, planned)
    assert found[MAC] == {"master": "campus.cfg", "creates": False, "shadowed": [], "notes": [], "shared": True}
    assert found["0004f2000002"]["shared"] and "unconfirmed" in found["0004f2000002"]["notes"][0]
    lines = site_files.describe(found)
    assert any(line.startswith(f"{MAC}: campus.cfg (named in the boot-server address") for line in lines)
    assert (boot / "campus.cfg").read_bytes() == NAMED and sorted(p.name for p in boot.iterdir()) == ["campus.cfg"]
