"""The phone's override files, and which of our parameters they would shadow.

A SoundPoint writes settings changed on the phone or in its web UI back to
the boot server (`<MAC>-phone.cfg`, `<MAC>-web.cfg`, in the master file's
OVERRIDES_DIRECTORY), and applies them above every file in CONFIG_FILES. A
value we push that such a file also sets never takes effect, silently. The
dry run names each one, and the push records it so that verification fails
the phone with "shadowed by <file>: <param>" instead of calling it verified.
Only names and files appear in a reason, never a value (it may be a password).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable
from urllib.parse import quote

from soundpoint import bootfiles

from fleet.drivers.errors import DriverError
from fleet.drivers.publish import Publisher
from fleet.phoneconf.secrets import MASK

OVERRIDES = "OVERRIDES_DIRECTORY"


@dataclass(frozen=True)
class Shadow:
    file: str          # as the phone finds it: `overrides/<MAC>-phone.cfg`
    param: str

    def reason(self) -> str:
        return f"shadowed by {self.file}: {self.param}"


@dataclass
class OverrideFiles:
    """The override files found for one phone, highest precedence first, and what could not be read."""
    files: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def shadows(self, pushed: dict[str, str]) -> list[Shadow]:
        """Every pushed parameter an override file sets to something else (a masked secret: set at all)."""
        found = []
        for name, value in pushed.items():
            for label, params in self.files:
                if name in params:
                    if value == MASK or params[name] != value:
                        found.append(Shadow(label, name))
                    break   # the highest file that sets it is the one the phone applies
        return found


def directory_url(boot_url: str, directory: str) -> str:
    """The URL of a folder below the boot directory, for a publisher opened there."""
    return boot_url.rstrip("/") + "/" + "/".join(quote(p, safe="") for p in directory.strip("/").split("/")) + "/"


def read(pub: Publisher, boot_url: str, mac: str, master: bootfiles.Master,
         open_dir: Callable[[str], Publisher]) -> OverrideFiles:
    """The phone's override files as it would find them; `open_dir(url)` opens a publisher on another folder.

    A folder that cannot be opened or a file that is not well-formed is noted
    (the phone skips such a file too); a refused read of a file raises, so a
    push never assumes "nothing shadowed" without having looked.
    """
    out = OverrideFiles()
    directory = master.directory(OVERRIDES)
    where, label = pub, ""
    if directory:
        if not bootfiles.is_plain_directory(directory):
            out.notes.append(f"{OVERRIDES} {directory[:80]!r} is not a folder below the boot directory: not checked")
            return out
        try:
            where = open_dir(directory_url(boot_url, directory))
        except DriverError as exc:
            out.notes.append(f"override folder {directory} not readable ({exc}): treated as holding no override file")
            return out
        label = directory.strip("/") + "/"
    try:
        for name in bootfiles.override_names(mac):
            data = where.read(name)
            if data is None:
                continue
            try:
                out.files.append((label + name, bootfiles.parse_parameters(label + name, data)))
            except bootfiles.BootFileError as exc:
                out.notes.append(f"{exc}: the phone skips it as well")
    finally:
        if where is not pub:
            where.close()
    return out
