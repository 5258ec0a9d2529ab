"""The boot server's files as a SoundPoint reads them: master file, CONFIG_FILES, macros, override files.

Shared by the controller (which must predict what a phone will apply, and
edit a site's master file without disturbing it) and the virtual phone
(which must apply files as a real one does). Facts from
shared/reference/polycom.md; where a fact is marked uncertain it says so here,
so there is one place to correct it.
"""
from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field

DEFAULT_MASTER = "000000000000.cfg"      # confirmed: used when `<MAC>.cfg` is absent
MAC_MACRO = "[PHONE_MAC_ADDRESS]"       # confirmed (UC Software 4.x): replaced by the phone's MAC in file names
MAX_CONFIG_FILES = 2047                 # confirmed: the whole CONFIG_FILES list
MAX_NAME = 255                          # confirmed: each entry
# Directory attributes of the master file (confirmed names; the last four appear in UC Software 4.x templates).
DIRECTORY_ATTRIBUTES = ("LOG_FILE_DIRECTORY", "OVERRIDES_DIRECTORY", "CONTACTS_DIRECTORY", "LICENSE_DIRECTORY",
                        "USER_PROFILES_DIRECTORY", "CALL_LISTS_DIRECTORY", "COREFILE_DIRECTORY")


class BootFileError(ValueError):
    """A provisioning file that cannot be used as it stands; the message names the file."""


def master_name(mac: str) -> str:
    return f"{mac.lower()}.cfg"


NAMED_MASTER_MIN = 5                    # confirmed: a master named in the boot-server address ends in .cfg, >= 5 chars


def named_master(name: str | None) -> str | None:
    """A validator's check of a master file named in a boot-server address: the name, or ValueError saying why not."""
    why = None if name is None else named_master_problem(name)
    if why:
        raise ValueError(why)
    return name


def named_master_problem(name: str) -> str | None:
    """Why `name` cannot be the master file named in a boot-server address (None: it can).

    Confirmed (SIP 2.2/3.0/3.1 admin guides, appendix A "Master Configuration
    Files"): "The filename must end with .cfg and be at least five characters
    long. If this file cannot be downloaded, the phone will search for the
    per-phone master configuration file". Fleet also asks for a plain name in
    the boot directory (no folder, no URL), the only place it publishes.
    """
    if not name.endswith(".cfg"):
        return f"{name[:80]!r} does not end in .cfg (the phone ignores any other name)"
    if len(name) < NAMED_MASTER_MIN:
        return f"{name!r} is shorter than {NAMED_MASTER_MIN} characters"
    if len(name) > MAX_NAME or not re.fullmatch(r"[A-Za-z0-9_.\-]+", name) or name.startswith("."):
        return f"{name[:80]!r} is not a plain file name in the boot directory (letters, digits, . _ -)"
    return None


def master_order(mac: str, named: str = "") -> tuple[str, ...]:
    """The master files a phone tries, in order (confirmed): the one named in its boot-server address, if any,
    then `<MAC>.cfg`, then `000000000000.cfg`; the first that downloads is the one it reads."""
    return ((named,) if named else ()) + (master_name(mac), DEFAULT_MASTER)


def split_boot_address(url: str) -> tuple[str, str]:
    """(the boot directory's URL, the master file it names or ""): `ftp://h/d/site.cfg` -> (`ftp://h/d/`, `site.cfg`).

    Only a last path segment that is a usable master name counts as one
    (named_master_problem); anything else is a directory.
    """
    head, sep, last = url.rpartition("/")
    if sep and "://" in head + sep and not head.endswith(":/") and last and named_master_problem(last) is None:
        return head + "/", last
    return url, ""


def override_names(mac: str) -> tuple[str, ...]:
    """The phone's write-back files, highest precedence first; both win over every CONFIG_FILES entry.

    `<MAC>-phone.cfg` (changes made on the phone, and on SIP 2.x/3.x through its
    web UI) is confirmed; `<MAC>-web.cfg` (web UI changes, UC Software 4.x) is
    confirmed as a name. *uncertain*: their order relative to each other (the
    local interface is taken to win here).
    """
    mac = mac.lower()
    return (f"{mac}-phone.cfg", f"{mac}-web.cfg")


def model_code(model: str) -> str:
    """The suffix of a model's child element in the master file: "SoundPoint IP 650" -> "SPIP650", "VVX 410" -> "VVX410".

    *uncertain*: taken from the UC Software 4.x master template's element names
    (`APPLICATION_SPIP650`, `APPLICATION_VVX500`); other product lines differ.
    """
    words = model.split()
    if words[:2] == ["SoundPoint", "IP"]:
        return "SPIP" + "".join(words[2:])
    if words[:2] == ["SoundStation", "IP"]:
        return "SSIP" + "".join(words[2:])
    return "".join(words).upper()


def expand(name: str, mac: str) -> str:
    """A CONFIG_FILES entry as the phone fetches it: the MAC macro replaced (case as the MAC is given)."""
    return name.replace(MAC_MACRO, mac.lower())


def split_list(raw: str) -> list[str]:
    return [f.strip() for f in raw.split(",") if f.strip()]


@dataclass
class Master:
    """The APPLICATION element of a master file, read (never rendered) by both packages."""
    attributes: dict[str, str] = field(default_factory=dict)
    children: dict[str, dict[str, str]] = field(default_factory=dict)   # APPLICATION_<code> -> its attributes

    @property
    def config_files(self) -> list[str]:
        return split_list(self.attributes.get("CONFIG_FILES", ""))

    def config_files_for(self, model: str | None) -> list[str]:
        """The list the phone of `model` reads: a non-empty `CONFIG_FILES_<code>` of its child element wins (confirmed)."""
        if model:
            code = model_code(model)
            own = self.children.get(f"APPLICATION_{code}", {}).get(f"CONFIG_FILES_{code}", "")
            if own.strip():
                return split_list(own)
        return self.config_files

    def directory(self, attribute: str) -> str:
        return self.attributes.get(attribute, "").strip()


def parse_xml(name: str, data: bytes) -> ET.Element:
    """The document's root; no DTDs or entities (a boot server's file is not trusted to be harmless)."""
    if b"<!DOCTYPE" in data[:4096] or b"<!ENTITY" in data:
        raise BootFileError(f"{name}: DTDs and entities are not accepted")
    try:
        return ET.fromstring(data)
    except ET.ParseError as exc:
        raise BootFileError(f"{name}: not well-formed XML ({exc})") from None


def parse_master(name: str, data: bytes) -> Master:
    root = parse_xml(name, data)
    app = root if root.tag == "APPLICATION" else root.find(".//APPLICATION")
    if app is None:
        raise BootFileError(f"{name}: no APPLICATION element")
    master = Master(dict(app.attrib), {c.tag: dict(c.attrib) for c in app if c.tag.startswith("APPLICATION_")})
    lists = [master.attributes.get("CONFIG_FILES", "")] + [v for c in master.children.values()
                                                            for k, v in c.items() if k.startswith("CONFIG_FILES")]
    for raw in lists:
        if len(raw) > MAX_CONFIG_FILES:
            raise BootFileError(f"{name}: CONFIG_FILES longer than {MAX_CONFIG_FILES} characters")
        if any(len(f) > MAX_NAME for f in split_list(raw)):
            raise BootFileError(f"{name}: a CONFIG_FILES entry is longer than {MAX_NAME} characters")
    return master


def parse_parameters(name: str, data: bytes) -> dict[str, str]:
    """All dotted-name attributes of every element, in document order (the first occurrence wins)."""
    root = parse_xml(name, data)
    params: dict[str, str] = {}
    for el in root.iter():
        for key, value in el.attrib.items():
            if "." in key and key not in params:
                params[key] = value
    return params


def is_plain_directory(value: str) -> bool:
    """A directory attribute naming a folder below the boot directory (not a URL, not leaving it)."""
    return bool(value) and "://" not in value and not value.startswith("/") and \
        all(part not in ("", ".", "..") for part in value.strip("/").split("/")) and \
        re.fullmatch(r"[A-Za-z0-9_.\-/]+", value) is not None
