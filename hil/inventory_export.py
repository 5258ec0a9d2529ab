"""The inventory a running lab writes for `fleet`, and the secrets file it points to: one exporter for both labs.

The userspace lab (hil.lab) and the namespace lab (hil.netns.lab) differ only
in where things are: addresses, ports, the router's SSH user. Each describes
its sites as `SiteExport`s and its credentials as `LabSecrets`; `export` makes
the documents from those, so both labs describe a site in the same words and a
change to the inventory format is made here once. The result reaches the lab
exactly as fleet reaches a real site (fleet.config.inventory reads it).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import yaml

from soundpoint import families

from .labfile import LabFile, SiteSpec
from .phone_types import PhoneSpec

LAN_INTERFACE = "lan0"  # the router's LAN side, as its captures and `ip link` name it (both labs)


@dataclass(frozen=True)
class LabSecrets:
    """The credentials a lab made for itself, as the exported secrets file names them."""
    admin_password: str          # every phone's web/REST admin password
    router_username: str         # the router's SSH user: `admin` (userspace SSH server), `root` (namespace sshd)
    router_key_file: Path        # the controller's SSH client key for the routers
    snmp_community: str
    snmp_auth: str
    snmp_priv: str
    sip_users: dict[str, str]    # extension -> SIP password
    hep_keys: dict[str, str]     # site name -> its Kamailio gateway's HEP auth key (collector.hep_auth_key)
    switch_community: str = ""   # the PoE switches' v2c community ("": the lab has no switches)
    switch_auth: str = ""        # and their v3 user `fleet`'s keys
    switch_priv: str = ""


@dataclass(frozen=True)
class SiteExport:
    """One running site as fleet reaches it: what differs between the userspace and the namespace lab."""
    spec: SiteSpec
    k: int                       # the site's index in the lab file
    phones: list[PhoneSpec]
    gateway: str                 # the router's LAN address: the phones' gateway, and the Kamailio gateway's
    dns: str                     # HOST:PORT of the DNS server the phones ask
    syslog: str                  # HOST:PORT the phones send syslog to
    events: str                  # HOST:PORT the phones post their telephone notifications to
    boot_url: str                # the boot server as fleet reaches it: scheme, address, port (no credentials)
    boot_user: str
    boot_password: str
    router: dict                 # router_entry(...)
    params: dict[str, str]       # the site's parameters, as its site.cfg gives them to the phones
    switch: dict | None = None   # switch_entry(...): the PoE switch powering the phones, port poe_ports[i] for phone i
    poe_ports: tuple[str, ...] = ()


def extension(site: SiteSpec, k: int, i: int) -> str:
    """Phone i of site k's extension (its SIP user): the site's first extension, a thousand apart per site."""
    return str(site.phones.first_extension + i + 1000 * k)


def router_entry(state_dir: Path, address: str, wan_interface: str, site: str, ssh_port: int, dns_port: int) -> dict:
    """The site router as fleet reaches it: SSH with the lab's host key, outage state and WAN locks in the lab's
    directory (the namespace lab passes its own ports: a real sshd and DNS on the standard ones)."""
    return {"driver": "linux_ssh", "address": address, "port": ssh_port, "credentials": "router",
            "wan_interface": wan_interface, "known_hosts": str(state_dir / "known_hosts"),
            "dns_port": dns_port, "state_dir": str((state_dir / f"router-{site}-outages").resolve()),
            # every lab router is this host: the platform's /run/fleet would be one lock for every lab on it
            "wan_lock_dir": str((state_dir / f"router-{site}-wanlocks").resolve())}


SWITCH_SECRET = "switch_snmp_v3"     # the lab's switches take SNMPv3 authPriv; switch_snmp_v2c holds the community


def switch_entry(name: str, address: str, port: int) -> dict:
    """A site's PoE switch as fleet reaches it: the snmp-poe driver, SNMPv3 with the lab's switch user."""
    return {"name": name, "driver": "snmp-poe", "address": address, "port": port, "credentials": SWITCH_SECRET,
            "snmp_version": "3", "timeout": 3}


def evidence_sources(lab: LabFile, site: SiteSpec) -> list[str]:
    """The per-server sources a real site of this shape has, unless the lab file picks them (`collector.evidence`):
    without the phones' registration line (a SIP 3.x site) the router's SIP capture is what is left; a Kamailio
    gateway adds its siptrace HEP (with a HEP address) and its registrar's bindings."""
    if site.collector.evidence is not None:
        return list(site.collector.evidence)
    return ((["router"] if not lab.syslog_registration_line else []) + (["hep"] if site.collector.hep else [])
            + (["gateway"] if site.gateway == "kamailio" else []))


def hep_key_secret(site: SiteSpec) -> str:
    """The secret naming a site's HEP auth key in the lab's secrets file (`collector.hep_auth_key`)."""
    return f"hep_{site.name}"


def evidence_inventory(lab: LabFile, site: SiteSpec, gateway: str, lan_interface: str = LAN_INTERFACE) -> dict:
    """Those sources as a site's inventory keys (fleet.config.inventory): `capture: [router lan0, hep ADDRESS]` (the
    router's LAN side sees every phone's SIP to both servers) and `gateway: {address, platform: kamailio}`
    (kamcmd over the router's SSH). With `collector.hep_auth_key` the HEP capture names the gateway's key."""
    sources = evidence_sources(lab, site)
    capture: list = [f"router {lan_interface}"] if "router" in sources else []
    if "hep" in sources and site.collector.hep:
        capture.append({"kind": "hep", "listen": site.collector.hep, "auth_keys": {gateway: hep_key_secret(site)}}
                       if site.collector.hep_auth_key else f"hep {site.collector.hep}")
    out: dict = {"capture": capture} if capture else {}
    if "gateway" in sources and site.gateway == "kamailio":
        out["gateway"] = {"address": gateway, "platform": "kamailio"}
    return out


def fit_to_families(inv: dict) -> dict:
    """Make the exported inventory describe phones that can exist (soundpoint.families).

    Each phone keeps the family the lab file gave it (hil.labfile); one whose model cannot run it gets the newest
    family it runs as its own `firmware_family` (a SoundPoint IP 650 in a uc-5.x lab is a uc-4.0 phone). A numeric
    site parameter outside the range of a family that knows it (a lab retry interval below the real 10 s minimum) is
    exported at the nearest value a real phone accepts; one that still fails is left out. The lab's own
    files keep the lab's value, so a lab with timers inside the real ranges exports them unchanged.
    """
    lab_family = families.get(inv["firmware_family"])
    for site in inv["sites"]:
        used = set()
        for phone in site["phones"]:
            # the family the lab file gave the phone (hil.labfile), else the lab's
            fam = families.get(phone["firmware_family"]) if phone.get("firmware_family") else lab_family
            if not fam.runs_on(phone["model"]):
                fam = (families.families_for(phone["model"]) or [lab_family])[-1]
                phone["firmware_family"] = fam.name
            used.add(fam)

        site["params"] = {k: fv for k, v in site["params"].items() if (fv := _fitted_for(list(used), k, v)) is not None}
        for phone in site["phones"]:
            # a phone's own parameters (labfile phones.params_of), fitted to the family that phone runs
            if phone.get("params"):
                own = families.get(phone["firmware_family"]) if phone.get("firmware_family") else lab_family
                phone["params"] = {k: fv for k, v in phone["params"].items()
                                   if (fv := _fitted_for([own], k, v)) is not None}
    return inv


def _fitted_for(knowing: list[families.Family], name: str, value: str) -> str | None:
    """`value` moved into the range of every family in `knowing` (the nearest value each accepts), or None when
    one of them still refuses it (or none of them knows the parameter)."""
    knowing = [f for f in knowing if f.lookup(name) is not None]
    if not knowing:
        return None
    for fam in knowing:
        p = fam.lookup(name)
        if p.kind == "int" and str(value).lstrip("-").isdigit() and int(value) not in p.also:
            lo = max(fam.expires_min, p.lo or 0) if name.endswith(".expires") else p.lo
            n = max(int(value), lo) if lo is not None else int(value)
            value = str(min(n, p.hi) if p.hi is not None else n)
    try:
        return value if all(f.check(name, value) is not None for f in knowing) else None
    except families.ParameterError:
        return None


def _phone_entry(site: SiteExport, i: int, phone: PhoneSpec) -> dict:
    ext = extension(site.spec, site.k, i)
    poe = ({"poe": {"switch": site.switch["name"], "port": site.poe_ports[i]}}
           if site.switch is not None and i < len(site.poe_ports) else {})
    return {**poe, "mac": phone.mac, "model": phone.model, "firmware_family": phone.family,
            **({"firmware_version": phone.firmware_version} if phone.firmware_version else {}),
            "address": phone.ip,
            "http_port": phone.http_port, "sip_port": phone.sip_port, "credentials": "phone_admin",
            "params": {**{k2: str(v) for k2, v in site.spec.phones.params_of.get(i, {}).items()},
                       "reg.1.address": ext, "reg.1.auth.userId": ext,
                       "reg.1.auth.password": f"secret:sip_{ext}"}}


def _site_entry(lab: LabFile, site: SiteExport) -> dict:
    spec = site.spec
    return {
        "name": spec.name,
        "gateway": site.gateway,
        "dns": site.dns,
        "collector": {"syslog": site.syslog, "events": site.events, "poll_interval": spec.collector.poll_interval},
        # the address the phones are given, master file and all (ftp://host/campus.cfg): the inventory
        # splits it as the phones do (inventory.BootServer), so the lab tests that reading
        "boot_server": {"url": site.boot_url + (spec.boot_master or ""), "credentials": f"boot_{spec.name}"},
        "router": site.router,
        **({"switches": [site.switch]} if site.switch is not None else {}),
        "params": site.params,
        "phones": [_phone_entry(site, i, phone) for i, phone in enumerate(site.phones)],
        **evidence_inventory(lab, spec, site.gateway),
    }


def _secrets_doc(sites: list[SiteExport], creds: LabSecrets) -> dict:
    doc: dict = {"phone_admin": {"username": "Polycom", "password": creds.admin_password},
                 "router": {"username": creds.router_username, "key_file": str(creds.router_key_file)},
                 "router_snmp_v2c": {"password": creds.snmp_community},
                 "router_snmp_v3": {"username": "fleet", "password": creds.snmp_auth, "priv_password": creds.snmp_priv}}
    if creds.switch_community and any(site.switch is not None for site in sites):
        doc["switch_snmp_v2c"] = {"password": creds.switch_community}
        doc[SWITCH_SECRET] = {"username": "fleet", "password": creds.switch_auth, "priv_password": creds.switch_priv}
    for site in sites:
        doc[f"boot_{site.spec.name}"] = {"username": site.boot_user, "password": site.boot_password}
        if site.spec.name in creds.hep_keys:
            doc[hep_key_secret(site.spec)] = {"password": creds.hep_keys[site.spec.name]}
        for i in range(len(site.phones)):
            ext = extension(site.spec, site.k, i)
            doc[f"sip_{ext}"] = {"password": creds.sip_users[ext]}
    return doc


def export(lab: LabFile, state_dir: Path, provider_port: int, sites: list[SiteExport],
           creds: LabSecrets) -> tuple[dict, dict]:
    """The inventory that `fleet` uses to reach the lab, and the secrets file it points to (state_dir/secrets.yml).
    `provider_port`: where the provider's registrar listens, behind its DNS name."""
    inv = {"name": lab.name, "firmware_family": lab.firmware_family,
           "secrets_file": str(state_dir / "secrets.yml"),
           "provider": {"name": lab.provider.name, "port": provider_port},
           "sites": [_site_entry(lab, site) for site in sites]}
    return fit_to_families(inv), _secrets_doc(sites, creds)


def write(path: Path, state_dir: Path, inv: dict, secrets_doc: dict) -> None:
    """The secrets file (owner only) beside the lab's state, and the inventory at `path`."""
    secrets_path = state_dir / "secrets.yml"
    # created 0600, never readable by others even for a moment (fleet refuses a secrets file others can read)
    fd = os.open(secrets_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)            # an existing file keeps its mode through O_CREAT
    with os.fdopen(fd, "w") as out:
        out.write(yaml.safe_dump(secrets_doc, sort_keys=True))
    path.write_text("# written by `hil up`; reaches the virtual lab exactly as a real site is reached\n"
                    + yaml.safe_dump(inv, sort_keys=False))
