"""What a push writes to a site's boot server, worked out from what is there now.

The phone reads `<MAC>.cfg`, else `000000000000.cfg`. Fleet reads the same
file, adds its own per-phone file in front of CONFIG_FILES (fleet.polycom,
a minimal text edit) and writes the result as `<MAC>.cfg`; the site's shared
files and the default master are never written. The override files are read
in the same pass, so the push can record which pushed value they shadow.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from soundpoint import bootfiles

from . import overrides, polycom
from .drivers.publish import Publisher


@dataclass
class PhoneFiles:
    files: dict[str, bytes]            # name -> content: `<MAC>.cfg` and fleet's per-phone file
    master_from: str                   # the master the phone reads today (its own, or the default)
    master: bootfiles.Master           # that master, parsed
    shadows: list[overrides.Shadow] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def creates_master(self) -> bool:
        return self.master_from == bootfiles.DEFAULT_MASTER

    def shadowed(self) -> str:
        """The verification failure reason ("" when nothing is shadowed), at most a few names."""
        if not self.shadows:
            return ""
        first = "; ".join(s.reason() for s in self.shadows[:3])
        return first + (f"; and {len(self.shadows) - 3} more" if len(self.shadows) > 3 else "")


def read_master(pub: Publisher, mac: str) -> tuple[str, bytes]:
    """(name, content) of the master file the phone would read; MasterFileError when there is none."""
    for name in (bootfiles.master_name(mac), bootfiles.DEFAULT_MASTER):
        data = pub.read(name)
        if data is not None:
            return name, data
    raise polycom.MasterFileError(f"neither {bootfiles.master_name(mac)} nor {bootfiles.DEFAULT_MASTER} is on "
                                  f"{pub.name}: fleet adds its file to the site's master file, it does not invent one")


def phone_files(pub: Publisher, boot_url: str, mac: str, params: dict[str, str],
                open_dir: Callable[[str], Publisher]) -> PhoneFiles:
    """The files to write for `mac`, and the pushed parameters its override files would shadow."""
    name, data = read_master(pub, mac)
    files = polycom.render_phone_files(mac, params, data, name)
    master = bootfiles.parse_master(name, data)
    found = overrides.read(pub, boot_url, mac, master, open_dir)
    return PhoneFiles(files, name, master, found.shadows(params), found.notes)
