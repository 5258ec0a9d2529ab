"""A worker's second look at a phone's rollout record read from Redis, before it publishes or rolls back anything.

The controller checked the plan when it made it, but the record a worker
reads later comes from Redis, which anyone with access to it can rewrite.
So the worker checks again what it is about to act on: the phone is in its
own inventory and the record is that phone's; every parameter is one the
catalogue knows, with a value in range for the fleet's firmware; a secret
reference appears only in a parameter the catalogue marks secret; and the
only file names it will back up, restore or delete are the ones the renderer
produces for that MAC. A record that fails any of these is refused whole,
with the reason, before anything is touched.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from soundpoint import catalogue

from fleet.phoneconf import polycom
from fleet.rollout import playbook as rollout_playbook
from fleet.phoneconf import secrets as secret_params
from fleet.config.inventory import Inventory, Phone, Site

BACKUP_MARKS = ("yes", "absent", "same")        # what rollout_push records per file in `backed_up:NAME`
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_REFERENCE = re.compile(r"^(secret:[A-Za-z0-9_.-]{1,128}|env:[A-Za-z_][A-Za-z0-9_]{0,127})$")


class PlanRefused(ValueError):
    """The rollout record read from Redis does not fit this phone, the catalogue or the inventory; says why."""


class _Entry(BaseModel):
    """A phone's part of the plan as `rollout_plan.PhonePlan.to_dict` writes it (fields we do not use are ignored)."""
    model_config = ConfigDict(strict=True, extra="ignore")
    mac: str
    site: str
    params: dict[str, str] = Field(max_length=10_000)
    secret_refs: dict[str, str] = Field({}, max_length=1_000)
    config_hash: str = Field(pattern=r"^[0-9a-f]{16}$")
    verbatim: list[str] = Field([], max_length=1_000)   # allow_uncatalogued names (fleet.rollout.playbook.uncatalogued)
    unchecked_reboot: bool = False   # strategy.reboot_without_call_check, for a family that cannot report call state
    # a revert (`fleet rollout revert`): the rollout whose backups of this phone's files are written back
    restore_from: str = Field("", pattern=r"^([A-Za-z0-9][A-Za-z0-9_.-]{0,120})?$")
    power_cycle_off_s: float = Field(0.0, ge=0, le=120)   # strategy.power_cycle_fallback (fleet.rollout.power_fallback)


@dataclass(frozen=True)
class Checked:
    site: Site
    phone: Phone
    params: dict[str, str]               # secret parameters masked (***)
    secret_refs: dict[str, str]          # secret parameter -> its reference, resolved only by the renderer
    config_hash: str
    backups: dict[str, str]              # file name -> BACKUP_MARKS value, only the renderer's names
    attempt: int
    unchecked_reboot: bool = False
    restore_from: str = ""               # a revert: the rollout whose backups the push writes back
    power_cycle_off_s: float = 0.0       # a hung phone's port is cycled (only where this worker's inventory has it)


def file_names(mac: str, named_master: str = "") -> frozenset[str]:
    """The files the renderer writes for this phone: the only names a worker backs up, restores or deletes
    (`named_master`: the site's boot_server.master_file from the worker's own inventory, never from the record)."""
    return frozenset(polycom.phone_file_names(mac, named_master))


def _phone(inv: Inventory, mac: str) -> tuple[Site, Phone]:
    try:
        return inv.phone(mac)
    except KeyError:
        raise PlanRefused(f"phone {mac} is not in this worker's inventory ({inv.name})") from None


def _params(mac: str, params: dict[str, str], family: str, verbatim: frozenset[str] = frozenset()) -> None:
    for name, value in params.items():
        where = f"phone {mac}: plan parameter {name[:80]!r}"
        if _CONTROL.search(value):
            raise PlanRefused(f"{where}: value holds control characters")
        if name in verbatim and catalogue.lookup(name) is None:
            try:   # the playbook allowed it: only its form is checked, as when the playbook was loaded
                rollout_playbook.uncatalogued(name, value)
            except ValueError as exc:
                raise PlanRefused(f"{where}: {exc}") from None
            continue
        param = catalogue.lookup(name)
        if param is None:
            raise PlanRefused(f"{where}: not a parameter the catalogue knows")
        if param.secret and value == secret_params.MASK:
            continue
        if value.startswith(("secret:", "env:")):
            if not param.secret:
                raise PlanRefused(f"{where}: a secret reference in a parameter that is not a secret parameter")
            if not _REFERENCE.match(value):
                raise PlanRefused(f"{where}: malformed secret reference")
            continue
        if polycom.families.get(family).lookup(name) is None:
            continue        # known to another family only: the phone ignores it (see rollout_plan)
        try:
            catalogue.check(name, value, family)
        except polycom.ParameterError as exc:
            raise PlanRefused(f"phone {mac}: plan parameter {exc}") from None


def _backups(mac: str, state: dict, named_master: str = "") -> dict[str, str]:
    names = file_names(mac, named_master)
    marks: dict[str, str] = {}
    for key, value in state.items():
        kind, sep, name = key.partition(":")
        if not sep or kind not in ("backed_up", "backing_up"):
            continue
        if name not in names:
            raise PlanRefused(f"phone {mac}: record names file {name[:80]!r}, which is not one of this phone's files "
                              f"({', '.join(sorted(names))})")
        if kind == "backed_up":
            if value not in BACKUP_MARKS:
                raise PlanRefused(f"phone {mac}: backed_up:{name} is {value[:20]!r}, expected one of {', '.join(BACKUP_MARKS)}")
            marks[name] = value
        elif value != "1":
            raise PlanRefused(f"phone {mac}: backing_up:{name} is {value[:20]!r}, expected 1")
    return marks


def restore_marks(inv: Inventory, rid: str, mac: str, state: dict) -> dict[str, str]:
    """What rollout `rid` recorded about backing up `mac`'s files (its record `state`), for a revert to write back:
    only the renderer's names for this phone, marks as BACKUP_MARKS; PlanRefused when the record says otherwise."""
    site, _ = _phone(inv, mac)
    if not state:
        raise PlanRefused(f"phone {mac} has no record in rollout {rid}: nothing to restore from")
    return _backups(mac, state, site.boot_server.master_file or "")


def check(inv: Inventory, rid: str, mac: str, state: dict) -> Checked:
    """Everything a push or rollback of `mac` in rollout `rid` reads from its record, checked; or PlanRefused."""
    site, phone = _phone(inv, mac)
    if not state:
        raise PlanRefused(f"phone {mac} has no record in rollout {rid}")
    try:
        entry = _Entry.model_validate(json.loads(state.get("plan") or "null"))
    except json.JSONDecodeError:
        raise PlanRefused(f"phone {mac}: the plan in rollout {rid} is not JSON") from None
    except ValidationError as exc:
        first = exc.errors(include_url=False, include_input=False)[0]
        field = ".".join(str(p) for p in first["loc"]) or "plan"
        raise PlanRefused(f"phone {mac}: plan field {field[:80]}: {first['msg']}") from None
    if entry.mac != mac or entry.site != site.name:
        raise PlanRefused(f"phone {mac}: the plan is for phone {entry.mac[:20]!r} at site {entry.site[:40]!r}, "
                          f"but the inventory has this phone at site {site.name}")
    _params(mac, entry.params, phone.family.name, frozenset(entry.verbatim))
    for name, ref in entry.secret_refs.items():
        param = catalogue.lookup(name)
        if param is None or not param.secret or not _REFERENCE.match(ref):
            raise PlanRefused(f"phone {mac}: plan secret reference for {name[:80]!r} is not a reference in a secret parameter")
    attempt = state.get("attempt", "1")
    if not re.fullmatch(r"[1-9][0-9]{0,3}", attempt):
        raise PlanRefused(f"phone {mac}: attempt {attempt[:20]!r} is not a number of attempts")
    return Checked(site, phone, entry.params, dict(entry.secret_refs), entry.config_hash,
                   _backups(mac, state, site.boot_server.master_file or ""), int(attempt),
                   entry.unchecked_reboot and phone.family.call_state_source is None, entry.restore_from,
                   entry.power_cycle_off_s if phone.poe is not None else 0.0)
