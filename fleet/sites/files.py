"""What a push writes to a site's boot server, worked out from what is there now.

The phone reads the master named in its boot-server address (the inventory's
`boot_server.master_file`), else `<MAC>.cfg`, else `000000000000.cfg`
(bootfiles.master_order). Fleet reads the same file, adds its own per-phone
file in front of CONFIG_FILES (fleet.phoneconf.polycom, a minimal text edit) and writes
the result as `<MAC>.cfg`; the site's shared files and the default master are
never written. A named master is shared by every phone whose address names
it, so it is edited in place with the MAC macro's entry
(`[PHONE_MAC_ADDRESS]-fleet.cfg`) that each phone expands to its own file. The override files are read
in the same pass, so the push can record which pushed value they shadow.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from soundpoint import bootfiles

from fleet.sites import overrides
from fleet.phoneconf import polycom
from fleet.phoneconf import secrets as secret_params
from fleet.drivers.publish import Publisher
from fleet.drivers.errors import DriverError
from fleet.drivers.publish import open_publisher
from fleet.config.inventory import Credentials, Secrets


# families whose phones expand [PHONE_MAC_ADDRESS] in CONFIG_FILES (polycom.md: UC Software 4.x templates;
# conformance entry prov-shared-master-mac-macro); elsewhere a shared named master is an unconfirmed layout
MACRO_FAMILIES = frozenset({"uc-4.0", "uc-5.x"})


@dataclass
class PhoneFiles:
    files: dict[str, bytes]            # name -> content: `<MAC>.cfg` and fleet's per-phone file
    master_from: str                   # the master the phone reads today (named, its own, or the default)
    master: bootfiles.Master           # that master, parsed
    shadows: list[overrides.Shadow] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    named_master: str = ""             # the inventory's boot_server.master_file, if any
    override_files: list[tuple[str, dict[str, str]]] = field(default_factory=list)   # highest precedence first

    @property
    def creates_master(self) -> bool:
        return self.master_from == bootfiles.DEFAULT_MASTER

    @property
    def shared_master(self) -> bool:
        """The phone reads the master named in its boot-server address, which other phones read too."""
        return bool(self.named_master) and self.master_from == self.named_master

    def shadowed(self) -> str:
        """The verification failure reason ("" when nothing is shadowed), at most a few names."""
        if not self.shadows:
            return ""
        first = "; ".join(s.reason() for s in self.shadows[:3])
        return first + (f"; and {len(self.shadows) - 3} more" if len(self.shadows) > 3 else "")


def read_master(pub: Publisher, mac: str, named_master: str = "") -> tuple[str, bytes]:
    """(name, content) of the master file the phone would read; MasterFileError when there is none."""
    order = bootfiles.master_order(mac, named_master)
    for name in order:
        data = pub.read(name)
        if data is not None:
            return name, data
    names = ", ".join(order[:-2]) + (", " if named_master else "") + " nor ".join(order[-2:])
    raise polycom.MasterFileError(f"neither {names} is on {pub.name}: fleet adds its file to the site's master "
                                  "file, it does not invent one")


def phone_files(pub: Publisher, boot_url: str, mac: str, params: dict[str, str],
                open_dir: Callable[[str], Publisher], named_master: str = "") -> PhoneFiles:
    """The files to write for `mac`, and the pushed parameters its override files would shadow."""
    name, data = read_master(pub, mac, named_master)
    files = polycom.render_phone_files(mac, params, data, name, named_master)
    master = bootfiles.parse_master(name, data)
    found = overrides.read(pub, boot_url, mac, master, open_dir)
    return PhoneFiles(files, name, master, found.shadows(params), found.notes, named_master, found.files)


def applies_now(pub: Publisher, mac: str, model: str, pf: PhoneFiles, cache: dict[str, dict[str, str] | None],
                notes: list[str]) -> dict[str, str]:
    """The values the phone applies from the boot server today: its override files, then its master's CONFIG_FILES
    in order (the first occurrence wins, as the phone reads them; fleet's own file among them once pushed).

    Secret parameters are left out (their values are never read into a plan). A listed file that is missing or not
    well-formed is skipped, as the phone skips it, with a note; `cache` holds the site's shared files by name.
    """
    layers = [values for _, values in pf.override_files]
    for name in (bootfiles.expand(f, mac) for f in pf.master.config_files_for(model)):
        if name not in cache:
            data = pub.read(name)
            try:
                cache[name] = None if data is None else bootfiles.parse_parameters(name, data)
            except bootfiles.BootFileError as exc:
                cache[name] = None
                notes.append(f"{exc}: the phone skips it as well")
        if cache[name] is None:
            continue
        layers.append(cache[name])
    out: dict[str, str] = {}
    for layer in layers:
        for k, v in layer.items():
            if not secret_params.is_secret(k):
                out.setdefault(k, v)
    return out


def survey(inventory, phones, with_values: bool = False) -> dict[str, dict]:
    """The dry run's look at each planned phone's boot server, read only: its master and what would shadow ours.

    `phones` are rollout_plan.PhonePlan entries (secret values masked: a secret
    parameter set in an override file counts as shadowed). Per MAC: `master`
    (the file the phone reads), `creates` (whether `<MAC>.cfg` would be made
    from the default master), `shadowed` (reasons), `notes`, with `with_values`
    `applies` (the non-secret values the phone applies from the boot server now: applies_now),
    or `error` when the boot server or its master could not be read.
    """
    out: dict[str, dict] = {}
    by_site: dict[str, list] = {}
    for ph in phones:
        by_site.setdefault(ph.site, []).append(ph)
    try:
        secrets = Secrets(inventory)
    except (OSError, KeyError, ValueError) as exc:
        return {ph.mac: {"error": f"secrets unreadable: {exc}"[:200]} for ph in phones}
    for site_name, planned in by_site.items():
        site = inventory.site(site_name)
        try:
            creds = secrets.credentials(site.boot_server.credentials) if site.boot_server.credentials else Credentials()
            pub = open_publisher(site.boot_server.url, creds)
        except (DriverError, KeyError, ValueError) as exc:
            out.update({ph.mac: {"error": str(exc)[:200]} for ph in planned})
            continue
        cache: dict[str, dict[str, str] | None] = {}
        try:
            for ph in planned:
                try:
                    pf = phone_files(pub, site.boot_server.url, ph.mac, ph.params,
                                     lambda url: open_publisher(url, creds), site.boot_server.master_file or "")
                    notes = list(pf.notes)
                    now = applies_now(pub, ph.mac, inventory.phone(ph.mac)[1].model, pf, cache, notes)
                except (DriverError, ValueError) as exc:
                    out[ph.mac] = {"error": str(exc)[:200]}
                    continue
                out[ph.mac] = {"master": pf.master_from, "creates": pf.creates_master,
                               "shadowed": [s.reason() for s in pf.shadows], "notes": notes}
                if with_values:
                    out[ph.mac]["applies"] = now
                if pf.shared_master:
                    out[ph.mac]["shared"] = True
                    family = inventory.phone(ph.mac)[1].family.name
                    if family not in MACRO_FAMILIES:
                        out[ph.mac]["notes"].append(
                            f"{bootfiles.MAC_MACRO} in a shared master is documented for UC Software 4.x; on "
                            f"{family} it is unconfirmed: a phone that does not expand it keeps its old values and "
                            "fails verification")
        finally:
            pub.close()
    return out


def describe(found: dict[str, dict]) -> list[str]:
    """The survey as dry-run lines: shadowed parameters first (each a phone verification will fail), then the rest."""
    lines = []
    for mac, r in sorted(found.items()):
        for reason in r.get("shadowed", []):
            lines.append(f"{mac}: {reason} (the phone keeps the override; verification will fail it)")
    for mac, r in sorted(found.items()):
        ours = polycom.fleet_file_name(mac)
        if "error" in r:
            lines.append(f"{mac}: boot server not checked: {r['error']}")
        elif r.get("shared"):
            lines.append(f"{mac}: {r['master']} (named in the boot-server address, read by every phone naming it) "
                         f"keeps every byte but CONFIG_FILES, which gains {polycom.SHARED_ENTRY} in front; "
                         f"{ours} is written")
        elif r["creates"]:
            lines.append(f"{mac}: {bootfiles.master_name(mac)} created from {bootfiles.DEFAULT_MASTER}, {ours} first "
                         "in CONFIG_FILES; the default master is not written")
        else:
            lines.append(f"{mac}: {r['master']} keeps every byte but CONFIG_FILES, which gains {ours} in front")
        lines += [f"{mac}: {note}" for note in r.get("notes", [])]
    return lines
