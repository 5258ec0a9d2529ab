"""How a SoundPoint reads its provisioning files: master `<MAC>.cfg`, then CONFIG_FILES left to right, overrides above all.

Precedence (confirmed in the admin guides): the first occurrence of a parameter
wins, so per-phone files are listed before shared ones; the phone's override
files (`<MAC>-phone.cfg`, `<MAC>-web.cfg` in OVERRIDES_DIRECTORY) win over
every CONFIG_FILES entry. A model's non-empty `CONFIG_FILES_<model>` replaces
CONFIG_FILES for that model, and `[PHONE_MAC_ADDRESS]` in a name is the MAC.
A file that is missing or not well-formed XML is reported and skipped, as the
phone's boot log does; the boot goes on with what could be read. The formats
themselves are read by soundpoint.bootfiles, the same reader fleet uses.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from soundpoint import bootfiles
from soundpoint.bootfiles import BootFileError as ConfigFileError   # noqa: F401  (the lab's name for it)


@dataclass
class MasterConfig:
    app_file_path: str = ""
    config_files: list[str] = field(default_factory=list)
    log_file_directory: str = ""
    overrides_directory: str = ""
    raw: bootfiles.Master = field(default_factory=bootfiles.Master)

    def files_for(self, mac: str, model: str | None) -> list[str]:
        """The CONFIG_FILES this phone fetches, in order, macros expanded."""
        return [bootfiles.expand(f, mac) for f in self.raw.config_files_for(model)]

    def override_files(self, mac: str) -> list[str]:
        """The override files this phone reads, highest precedence first, as paths below the boot directory."""
        prefix = self.overrides_directory.strip("/") + "/" if self.overrides_directory.strip("/") else ""
        return [prefix + name for name in bootfiles.override_names(mac)]


def parse_master(name: str, data: bytes) -> MasterConfig:
    master = bootfiles.parse_master(name, data)
    return MasterConfig(app_file_path=master.attributes.get("APP_FILE_PATH", ""), config_files=master.config_files,
                        log_file_directory=master.directory("LOG_FILE_DIRECTORY"),
                        overrides_directory=master.directory("OVERRIDES_DIRECTORY"), raw=master)


def parse_parameters(name: str, data: bytes) -> dict[str, str]:
    """All dotted-name attributes of every element, in document order (first occurrence wins)."""
    return bootfiles.parse_parameters(name, data)


def merge_first_wins(layers: list[dict[str, str]]) -> dict[str, str]:
    merged: dict[str, str] = {}
    for layer in layers:
        for k, v in layer.items():
            merged.setdefault(k, v)
    return merged
