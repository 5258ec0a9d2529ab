"""The Polycom parameters we manage, and the provisioning files they are rendered into.

Pure functions, no I/O. Facts come from shared/reference/polycom.md; where the
reference marks something uncertain it says so beside the entry. The first
occurrence of a parameter wins on the phone, so fleet's per-phone file is put
in front of the site's own files in the master file's CONFIG_FILES (the
master-file part below: an edit of the site's file, never a rendered one).
"""
from __future__ import annotations

import re
from xml.sax.saxutils import quoteattr, unescape

from soundpoint import bootfiles, families

# The parameter catalogue lives in the firmware profiles (soundpoint.families, one module per family); a name's
# entry and a value's check are soundpoint.catalogue (lookup, check). These names are kept for this module's callers.
ParameterError = families.ParameterError
Param = families.Param
EXPIRES_MIN = {name: fam.expires_min for name, fam in families.FAMILIES.items()}
FAILBACK_FAMILIES = frozenset(name for name, fam in families.FAMILIES.items() if fam.failover_controls)


def _union_catalogue() -> list[tuple[re.Pattern, Param]]:
    """Every entry of every family once (by name), as (regex, entry): for listings and examples."""
    seen: dict[str, Param] = {}
    for fam in reversed(families.FAMILIES.values()):
        for p in fam.catalogue:
            seen.setdefault(p.name, p)
    return [(p.regex, p) for p in seen.values()]


CATALOGUE: list[tuple[re.Pattern, Param]] = _union_catalogue()


def render_config(params: dict[str, str]) -> str:
    """One XML file; elements group parameters by their first name component, as Polycom's templates do."""
    groups: dict[str, list[tuple[str, str]]] = {}
    for k in sorted(params):
        groups.setdefault(k.split(".")[0], []).append((k, params[k]))
    body = []
    for group, items in groups.items():
        attrs = "\n    ".join(f"{k}={quoteattr(v)}" for k, v in items)
        body.append(f"  <{group}\n    {attrs}/>")
    return '<?xml version="1.0" standalone="yes"?>\n<polycomConfig>\n' + "\n".join(body) + "\n</polycomConfig>\n"


# ---------------------------------------------------------------- the master file: the site's, edited, never rendered
# A site's master file (`<MAC>.cfg`, else `000000000000.cfg`) lists the site's own files, firmware image and
# directories. Fleet changes exactly one thing in it: its per-phone file goes first in CONFIG_FILES (the first
# occurrence of a parameter wins), by editing the text, so every other byte (attribute order, quoting, spacing,
# comments, model child elements) stays as the site wrote it, and a rollback restores it byte for byte.

class MasterFileError(ParameterError):
    """A master file fleet cannot safely add its file to; the message names the file."""


_MASK = re.compile(rb"<!--.*?-->|<\?.*?\?>|<!\[CDATA\[.*?\]\]>", re.S)
_ATTR = rb"""[A-Za-z_:][-A-Za-z0-9_:.]*\s*=\s*(?:"[^"]*"|'[^']*')"""
_START = re.compile(rb"<(?P<tag>APPLICATION(?:_[A-Za-z0-9]+)?)(?P<attrs>(?:\s+" + _ATTR + rb")*)\s*/?>")
_ONE_ATTR = re.compile(rb"""(?P<name>[A-Za-z_:][-A-Za-z0-9_:.]*)\s*=\s*(?P<q>["'])(?P<value>.*?)(?P=q)""", re.S)


FLEET_SUFFIX = "-fleet.cfg"
# how a master shared by many phones (one named in the boot-server address) lists each phone's own fleet file
SHARED_ENTRY = bootfiles.MAC_MACRO + FLEET_SUFFIX


def fleet_file_name(mac: str) -> str:
    return f"{mac.lower()}{FLEET_SUFFIX}"


def phone_file_names(mac: str, named_master: str = "") -> tuple[str, ...]:
    """The phone's master file, fleet's per-phone file, and the site's named master (when the inventory names
    one, boot_server.master_file): the only names a rollout writes, backs up or deletes for this phone."""
    return (bootfiles.master_name(mac), fleet_file_name(mac)) + ((named_master,) if named_master else ())


def _masked(data: bytes) -> bytes:
    """`data` with comments, processing instructions and CDATA blanked (same length), so no tag is found inside one."""
    return _MASK.sub(lambda m: b" " * len(m.group(0)), data)


def _entries(raw: bytes, mac: str) -> list[str]:
    return [bootfiles.expand(f, mac) for f in bootfiles.split_list(unescape(raw.decode("utf-8", "replace"),
                                                                           {"&quot;": '"', "&apos;": "'"}))]


def _front(raw: bytes, ours: str, mac: str, entry: str) -> bytes | None:
    """The list with `entry` (naming `ours` for this phone) first, as raw attribute text; None when it is first."""
    entries = _entries(raw, mac)
    if entries and entries[0] == ours:
        return None
    if not raw.strip():
        return entry.encode()
    sep = b", " if re.search(rb",\s", raw) or b"," not in raw else b","
    lead = raw[:len(raw) - len(raw.lstrip())]
    return lead + entry.encode() + sep + raw[len(lead):]


def with_fleet_file(name: str, data: bytes, ours: str, mac: str, entry: str | None = None) -> bytes:
    """The master file `data` with `ours` first in CONFIG_FILES and every other byte unchanged.

    `entry` is the text put in the list when it is not `ours` itself: a master
    shared by many phones gets SHARED_ENTRY, which each phone expands to its
    own fleet file.

    Also put first in a model's non-empty `CONFIG_FILES_<model>` (the list that
    model reads instead); empty ones stay as they are. Our file already first:
    `data` is returned unchanged. No CONFIG_FILES attribute: one is added right
    after the element name. MasterFileError when the file is no usable master
    or the list would grow past the phone's limit.
    """
    try:
        bootfiles.parse_master(name, data)
    except bootfiles.BootFileError as exc:
        raise MasterFileError(str(exc)) from None
    masked = _masked(data)
    top = next((m for m in _START.finditer(masked) if m.group("tag") == b"APPLICATION"), None)
    if top is None:
        raise MasterFileError(f"{name}: the APPLICATION start tag could not be located in the text")
    tags = [top]
    if not top.group(0).endswith(b"/>"):   # its model child elements, up to the next APPLICATION element if any
        for m in _START.finditer(masked, top.end()):
            if m.group("tag") == b"APPLICATION":
                break
            tags.append(m)
    edits: list[tuple[int, int, bytes]] = []     # (start, end, replacement) in `data`
    found = False
    for m in tags:
        tag = m.group("tag")
        wanted = b"CONFIG_FILES" if m is top else b"CONFIG_FILES_" + tag.removeprefix(b"APPLICATION_")
        for a in _ONE_ATTR.finditer(masked, m.start("attrs"), m.end("attrs")):
            if a.group("name") != wanted:
                continue
            found |= m is top
            raw = data[a.start("value"):a.end("value")]
            if m is not top and not raw.strip():
                continue   # an empty model list means "use CONFIG_FILES": nothing to add there
            new = _front(raw, ours, mac, entry or ours)
            if new is None:
                continue
            if len(unescape(new.decode("utf-8", "replace"))) > bootfiles.MAX_CONFIG_FILES:
                raise MasterFileError(f"{name}: {wanted.decode()} would be longer than {bootfiles.MAX_CONFIG_FILES} "
                                      f"characters with {ours} added")
            edits.append((a.start("value"), a.end("value"), new))
    if not found:
        at = top.start("tag") + len(b"APPLICATION")
        edits.append((at, at, b' CONFIG_FILES="' + (entry or ours).encode() + b'"'))
    out = data
    for start, end, new in sorted(edits, reverse=True):
        out = out[:start] + new + out[end:]
    try:   # the edited file, read as the phone reads it, must list ours first
        first = [bootfiles.expand(f, mac) for f in bootfiles.parse_master(name, out).config_files[:1]]
    except bootfiles.BootFileError as exc:
        raise MasterFileError(f"{name}: the edit would break the file ({exc})") from None
    if first != [ours]:
        raise MasterFileError(f"{name}: could not put {ours} first in CONFIG_FILES by a text edit; edit it by hand")
    return out


def render_phone_files(mac: str, params: dict[str, str], master: bytes | None = None,
                       master_from: str | None = None, named_master: str = "") -> dict[str, bytes]:
    """The phone's files after a push: fleet's per-phone file, and its master file with that file first.

    `master` is the file the phone reads today (`<MAC>.cfg`, else the default,
    named by `master_from`): its copy becomes `<MAC>.cfg`, the default itself is
    never written. When the phone reads the master named in its boot-server
    address (`named_master`), that file is edited in place instead. Without
    any master (a bare boot directory, as in a lab or a test) a master naming
    only fleet's file is made.
    """
    master_file, ours = phone_file_names(mac)[:2]
    if master is None:
        master = (b'<?xml version="1.0" standalone="yes"?>\n<APPLICATION CONFIG_FILES=' + quoteattr(ours).encode()
                  + b"/>\n")
    elif named_master and master_from == named_master:
        # the master named in the boot-server address is shared by every phone that names it: it keeps its name
        # and gains the MAC macro's entry, which each phone expands to its own fleet file
        return {named_master: with_fleet_file(named_master, master, ours, mac, SHARED_ENTRY),
                ours: render_config(params).encode()}
    else:
        master = with_fleet_file(master_from or master_file, master, ours, mac)
    return {master_file: master, ours: render_config(params).encode()}
