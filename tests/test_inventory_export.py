"""One exporter writes the inventory of both labs (hil.inventory_export), and fleet reads what it writes.

A site is described as the labs describe it (SiteExport, LabSecrets), without starting anything; the written
inventory and secrets file must load in fleet.config.inventory with every reference resolved.
"""
from __future__ import annotations

from pathlib import Path

import yaml

from fleet.config import inventory
from hil import inventory_export
from hil import labfile
from hil.lab import Lab, phone_ip, phone_mac
from hil.netns.lab import NetnsLab
from hil.phone_types import PhoneSpec

ROOT = Path(__file__).resolve().parent.parent


def _lab(tmp_path: Path, **site) -> labfile.LabFile:
    spec = yaml.safe_load((ROOT / "hil" / "labs" / "one-site.yml").read_text())
    spec["sites"][0].update(site)
    path = tmp_path / "lab.yml"
    path.write_text(yaml.safe_dump(spec))
    return labfile.load(path).on_net(10)     # a unit: no lab runs, so no net is claimed (hil.netlock)


def _export(lab: labfile.LabFile, state: Path) -> tuple[dict, dict]:
    site, k = lab.sites[0], 0
    phones = [PhoneSpec(mac=phone_mac(lab.net, k, i), model=site.phones.model_of(i), ip=phone_ip(lab.net, k, i),
                        boot_url="unused", family=lab.phone_family(k, i), firmware_version=lab.phone_version(k, i))
              for i in range(site.phones.count)]
    users = {inventory_export.extension(site, k, i): f"sip-pw-{i}" for i in range(site.phones.count)}
    creds = inventory_export.LabSecrets(admin_password="adm", router_username="admin",
                                        router_key_file=state / "router_client_key", snmp_community="c",
                                        snmp_auth="a" * 12, snmp_priv="p" * 12, sip_users=users,
                                        hep_keys={site.name: "hep-key"} if site.collector.hep_auth_key else {})
    export = inventory_export.SiteExport(
        spec=site, k=k, phones=phones, gateway="127.10.0.1", dns="127.60.0.53:5353", syslog=site.collector.syslog,
        events=site.collector.events, boot_url="http://127.10.0.3:8080/", boot_user="PlcmSpIp", boot_password="bp",
        router=inventory_export.router_entry(state, "127.10.0.1", "wan-hq", site.name, 2222, 5353),
        params={"reg.1.server.1.address": "voip.provider.example", "reg.1.server.1.expires": "12"})
    return inventory_export.export(lab, state, 5060, [export], creds)


def test_the_exported_inventory_loads_in_fleet_with_every_secret_resolved(tmp_path):
    lab = _lab(tmp_path, gateway="kamailio", collector={"syslog": "127.0.0.1:5514", "events": "127.0.0.1:8514",
                                                         "hep": "127.0.0.1:9060", "hep_auth_key": True})
    inv_doc, secrets_doc = _export(lab, tmp_path)
    path = tmp_path / "inventory.yml"
    inventory_export.write(path, tmp_path, inv_doc, secrets_doc)
    assert (tmp_path / "secrets.yml").stat().st_mode & 0o777 == 0o600
    inv = inventory.load(path)
    secrets = inventory.Secrets(inv)
    secrets.check_refs(inv)
    site = inv.sites[0]
    assert len(site.phones) == 10 and site.phones[0].params["reg.1.auth.password"] == "secret:sip_1001"
    assert secrets.credentials("phone_admin").password == "adm"
    # the site's evidence: the Kamailio gateway's bindings and its signed HEP, named by the secret holding the key
    assert inv_doc["sites"][0]["gateway"] == {"address": "127.10.0.1", "platform": "kamailio"}
    assert inv_doc["sites"][0]["capture"] == [{"kind": "hep", "listen": "127.0.0.1:9060",
                                               "auth_keys": {"127.10.0.1": "hep_hq"}}]
    assert secrets_doc["hep_hq"] == {"password": "hep-key"}


def test_a_phone_entry_comes_from_its_spec(tmp_path):
    """Ports, family and version are the phone's own (a SoundPoint IP 650 runs uc-4.0 here, the VVX uc-5.x)."""
    inv_doc, _ = _export(_lab(tmp_path, firmware_version="5.7.0"), tmp_path)
    first, second = inv_doc["sites"][0]["phones"][:2]
    assert (first["model"], first["firmware_family"], first.get("firmware_version")) == ("SoundPoint IP 650", "uc-4.0", None)
    assert (second["model"], second["firmware_family"], second["firmware_version"]) == ("VVX 410", "uc-5.x", "5.7.0")
    assert (first["http_port"], first["sip_port"]) == (8080, 5060)


def test_both_labs_export_through_the_one_exporter(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(inventory_export, "export",
                        lambda lab, state, port, sites, creds: calls.append((type(lab).__name__, port, creds)) or ({}, {}))
    spec = _lab(tmp_path)
    Lab(spec, tmp_path / "userspace").inventory()
    NetnsLab(spec.model_copy(update={"backend": "netns"}), tmp_path / "netns").inventory()
    assert [(name, port, creds.router_username) for name, port, creds in calls] == [
        ("LabFile", 5060, "admin"), ("LabFile", 5060, "root")]
