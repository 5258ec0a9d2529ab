"""How a SoundPoint reads its provisioning files: master `<MAC>.cfg`, then CONFIG_FILES left to right.

Precedence (confirmed in the admin guides): the first occurrence of a parameter
wins, so per-phone files are listed before shared ones. A file that is missing
or not well-formed XML is reported and skipped, as the phone's boot log does;
the boot goes on with what could be read.
"""
from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass, field


class ConfigFileError(ValueError):
    """A provisioning file the phone cannot use; the message names the file."""


@dataclass
class MasterConfig:
    app_file_path: str = ""
    config_files: list[str] = field(default_factory=list)
    log_file_directory: str = ""
    overrides_directory: str = ""


def _parse_xml(name: str, data: bytes) -> ET.Element:
    if b"<!DOCTYPE" in data[:4096] or b"<!ENTITY" in data[:4096]:
        raise ConfigFileError(f"{name}: DTDs and entities are not accepted")
    try:
        return ET.fromstring(data)
    except ET.ParseError as exc:
        raise ConfigFileError(f"{name}: not well-formed XML ({exc})") from None


def parse_master(name: str, data: bytes) -> MasterConfig:
    root = _parse_xml(name, data)
    app = root if root.tag == "APPLICATION" else root.find(".//APPLICATION")
    if app is None:
        raise ConfigFileError(f"{name}: no APPLICATION element")
    raw = app.get("CONFIG_FILES", "")
    if len(raw) > 2047:
        raise ConfigFileError(f"{name}: CONFIG_FILES longer than 2047 characters")
    files = [f.strip() for f in raw.split(",") if f.strip()]
    for f in files:
        if len(f) > 255:
            raise ConfigFileError(f"{name}: a CONFIG_FILES entry is longer than 255 characters")
    return MasterConfig(app_file_path=app.get("APP_FILE_PATH", ""), config_files=files,
                        log_file_directory=app.get("LOG_FILE_DIRECTORY", ""),
                        overrides_directory=app.get("OVERRIDES_DIRECTORY", ""))


def parse_parameters(name: str, data: bytes) -> dict[str, str]:
    """All dotted-name attributes of every element, in document order (first occurrence wins)."""
    root = _parse_xml(name, data)
    params: dict[str, str] = {}
    for el in root.iter():
        for key, value in el.attrib.items():
            if "." in key and key not in params:
                params[key] = value
    return params


def merge_first_wins(layers: list[dict[str, str]]) -> dict[str, str]:
    merged: dict[str, str] = {}
    for layer in layers:
        for k, v in layer.items():
            merged.setdefault(k, v)
    return merged
