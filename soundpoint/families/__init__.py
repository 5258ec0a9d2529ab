"""Firmware families of Polycom phones as data: parameter catalogue, limits, interfaces, reboot methods, models.

One module per family (sip2, sip3, ucs4, ucs5) holds what that firmware accepts
and offers, as a `FAMILY` profile (soundpoint.families.profile: the shapes). This
package is the lookup by name: MODULES names the family modules, loaded at
import; `register` adds a family at run time (a plug-in, a test's fake family)
without editing any module here. Both the controller (fleet) and the virtual lab
(hil) read them, so a correction to a family is made once. Facts come from
shared/reference/polycom.md; each module names its sources and marks the
uncertain ones.

Adding a family: a module here exporting FAMILY and its line in MODULES, plus
its phone control (fleet.phones.BACKENDS); or, outside this tree, `register`
here and `fleet.phones.register` there.
"""
from __future__ import annotations

import difflib
import importlib

from soundpoint.families.profile import (CHECK_SYNC, FAMILIES, LOG_UPLOAD, REBOOT_METHODS, REST, STATE_POLLING,
                                         SYSLOG_BOOTROM, SYSLOG_CONFIG, TEL_NOTIFICATION, WEB_REBOOT, WEB_UI, Family,
                                         FamilyError, Param, ParameterError)

__all__ = [
    "CHECK_SYNC", "FAMILIES", "LOG_UPLOAD", "MODULES", "NAMES", "REBOOT_METHODS", "REST", "STATE_POLLING",
    "SYSLOG_BOOTROM", "SYSLOG_CONFIG", "TEL_NOTIFICATION", "WEB_REBOOT", "WEB_UI", "Family", "FamilyError", "Param",
    "ParameterError", "check_model", "families_for", "get", "lookup_any", "register", "unregister",
]

# The families this tool ships, by the name used everywhere (inventory, lab files, playbooks), oldest first ->
# the module of this package that holds its profile (`FAMILY`).
MODULES = {"sip-2.x": "sip2", "sip-3.x": "sip3", "uc-4.0": "ucs4", "uc-5.x": "ucs5"}

# The names of every registered family, oldest first (the shipped ones, then those registered at run time);
# kept equal to tuple(FAMILIES) by register/unregister.
NAMES: tuple[str, ...] = ()

# Names of earlier versions of this tool, or guesses, mapped to a hint for the person who wrote them.
_OLD_NAMES = {
    "sip-1.x": "SIP 1.x is not supported; the oldest family is sip-2.x",
    "uc-4.x": "SoundPoint IP phones stop at UC Software 4.0: use uc-4.0",
    "uc-4": "use uc-4.0", "uc-5": "use uc-5.x", "sip-2": "use sip-2.x", "sip-3": "use sip-3.x",
}


def register(family: Family) -> Family:
    """Make `family` known by its name from now on (inventory, lab files, playbooks, parameter checks).

    For a family outside this package (a plug-in, a test's fake family); a name already registered is refused, so a
    plug-in cannot silently replace a shipped family. Returns the family, so a module can write
    `FAMILY = register(Family(...))`."""
    global NAMES
    if not isinstance(family, Family):
        raise TypeError(f"register takes a soundpoint.families.Family, not {type(family).__name__}")
    if family.name in FAMILIES:
        raise FamilyError(f"firmware family {family.name!r} is already registered")
    if not family.name or family.name != family.name.strip().lower():
        raise FamilyError(f"firmware family name {family.name!r:.40}: lower case, no surrounding spaces")
    if not family.reboot_methods or not set(family.reboot_methods) <= set(REBOOT_METHODS):
        raise FamilyError(f"firmware family {family.name}: reboot methods {family.reboot_methods} not among "
                          f"{', '.join(REBOOT_METHODS)}")
    FAMILIES[family.name] = family
    NAMES = tuple(FAMILIES)
    return family


def unregister(name: str) -> None:
    """Forget a family added by `register` (a test undoing its fake family); the shipped families stay."""
    global NAMES
    if name in MODULES:
        raise FamilyError(f"{name} ships with this tool (soundpoint.families.MODULES) and cannot be unregistered")
    FAMILIES.pop(name, None)
    NAMES = tuple(FAMILIES)


def get(name: object) -> Family:
    """The family of that name; FamilyError with a hint for an old or misspelt one."""
    if isinstance(name, str) and name in FAMILIES:
        return FAMILIES[name]
    text = str(name)
    hint = _OLD_NAMES.get(text.lower()) or (lambda c: f"did you mean {c[0]}?" if c else "")(
        difflib.get_close_matches(text, NAMES, n=1))
    raise FamilyError(f"unknown firmware family {text!r:.40}; known: {', '.join(NAMES)}" + (f" ({hint})" if hint else ""))


def families_for(model: str) -> list[Family]:
    """Every family the model can run, oldest first."""
    return [f for f in FAMILIES.values() if f.runs_on(model)]


def check_model(model: str, family: Family) -> None:
    """FamilyError saying why `model` cannot run `family` (and what it can run)."""
    if family.runs_on(model):
        return
    can = [f.name for f in families_for(model)]
    why = (f"{model} cannot run {family.title} ({family.name})"
           + (f"; it runs {', '.join(can)}" if can else "; no family in this tool lists that model"))
    raise FamilyError(why)


def lookup_any(name: str) -> Param | None:
    """The entry for `name` in the first family (newest first) that knows it: kinds and secrecy agree across families."""
    for fam in reversed(FAMILIES.values()):
        p = fam.lookup(name)
        if p is not None:
            return p
    return None


def _load_shipped() -> None:
    """Register the profile of every module in MODULES, in its order (found by name, as labgrid finds its drivers)."""
    for name, module_name in MODULES.items():
        family = importlib.import_module(f"{__name__}.{module_name}").FAMILY
        if family.name != name:
            raise ImportError(f"{__name__}.{module_name} holds family {family.name!r}, MODULES says {name!r}")
        register(family)


_load_shipped()
