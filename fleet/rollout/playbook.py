"""Rollout playbooks: targets, parameters, strategy, verification, rollback, schedule; validated before anything runs."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationInfo, field_validator

from soundpoint import catalogue, values
from soundpoint.strict import Strict
from soundpoint.yamlfile import FieldError, FileError, load_model, source_of

from fleet.phoneconf import secrets as secret_params
from fleet.config import validate
from fleet.experiment import playbook as experiment_playbook
from fleet.rollout import policy

COUNT_OR_PERCENT = re.compile(r"^([0-9]{1,7})(%?)$")     # ASCII digits only


def _count_or_percent(v, positive: bool):
    if isinstance(v, bool) or not isinstance(v, (int, str)):
        raise ValueError("a count (10) or a percent ('20%')")
    m = COUNT_OR_PERCENT.match(str(v))
    if not m or (isinstance(v, int) and v < 0):
        raise ValueError("a count (10) or a percent ('20%'), ASCII digits")
    n = int(m.group(1))
    if m.group(2) and n > 100:
        raise ValueError(f"{v}: a percent is at most 100%")
    if positive and n == 0:
        raise ValueError("a positive count (10) or a percent ('20%')")
    return v


def amount(value: int | str, of: int) -> int:
    """A count (5) or a percent of `of` ("20%", rounded down, at least 1 when `of` > 0)."""
    text = str(value).strip()
    if text.endswith("%"):
        return max(1, int(of * int(text[:-1]) / 100)) if of else 0
    return int(text)


class Targets(Strict):
    sites: list[str] = Field(default=[], description="empty: every site")
    models: validate.ModelList = []
    macs: validate.MacList = []


class FailureBudget(Strict):
    total: int | str = Field(0, description="failed phones the whole rollout tolerates; more halts it (count or percent)")
    per_site: int | str | None = None

    @field_validator("total", "per_site", mode="before")
    @classmethod
    def count_or_percent(cls, v):
        return v if v is None else _count_or_percent(v, positive=False)


class Strategy(Strict):
    canary: int = Field(1, ge=0, le=100000, description="phones updated and verified first, alone")
    wave_size: int | str = Field("10%", description="phones per wave after the canaries (count or percent)")
    max_unavailable: int | str = Field(1, description="per site, at any moment (count or percent of the site's targets)")
    failure_budget: FailureBudget = FailureBudget()
    progress_deadline: float = Field(600, gt=0, le=7 * 86400, description="seconds a wave may take before the rollout halts")
    allow_overload: bool = False
    reboot_without_call_check: bool = Field(False, description="phones whose firmware cannot report its call state "
                                                               "(SIP 2.x) are rebooted unchecked instead of deferred; "
                                                               "a phone whose check fails is still deferred")
    power_cycle_fallback: bool = Field(False, description="a phone with a PoE port in the inventory (`poe`) that "
                                                          "answers nothing (no call check, no identity, no reboot "
                                                          "method) has its switch port power-cycled instead, then is "
                                                          "verified as usual; off by default")
    power_off_s: float = Field(5.0, gt=0, le=120, description="seconds a power-cycled port stays off")

    @field_validator("wave_size", "max_unavailable", mode="before")
    @classmethod
    def count_or_percent(cls, v):
        return _count_or_percent(v, positive=True)


class Verify(Strict):
    registered_to: list[int] = Field(default=[1], min_length=1, max_length=9, description="servers each phone must be registered to")
    within: float = Field(120, gt=0, le=86400, description="seconds after the reboot")

    @field_validator("registered_to")
    @classmethod
    def indexes(cls, v: list[int]) -> list[int]:
        seen = set()
        for i, n in enumerate(v):
            if not 1 <= n <= 9:
                raise FieldError((i,), f"server {n}: servers are numbered from 1 (server 1 is the primary) to 9")
            if n in seen:
                raise FieldError((i,), f"server {n} is listed twice")
            seen.add(n)
        return v


class Schedule(Strict):
    cron: validate.Cron = Field(description="minute hour day-of-month month day-of-week")
    timezone: validate.Timezone = "UTC"


class RolloutPlaybook(Strict):
    kind: Literal["rollout"]
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    targets: Targets = Targets()
    # declared before `params`: its validator reads it
    allow_uncatalogued: bool = Field(False, description="pass parameters the catalogue does not know through "
                                                        "verbatim (unchecked; shown as such in the dry run)")
    params: dict[str, str | int] = Field(min_length=1)
    reset: list[str] = Field(default=[], max_length=1000,
                             description="parameters an earlier rollout set that this one puts back to the inventory's "
                                         "value (or stops writing): rollouts stack, so without this they stay")
    strategy: Strategy = Strategy()
    verify: Verify = Verify()
    rollback: bool = True
    drill: str | None = Field(None, min_length=1, max_length=4096,
                              description="experiment playbook run on the canary site after the canary wave")
    schedule: Schedule | None = None
    keep_backups: bool = Field(False, description="keep the boot server's <file>.before-<id> backups (they may hold "
                                                  "SIP passwords) after the rollout finished; by default they are "
                                                  "removed once it can no longer be resumed or rolled back")

    @field_validator("params")
    @classmethod
    def secrets_placed(cls, v: dict[str, str | int]) -> dict[str, str | int]:
        """`secret:`/`env:` only in secret parameters, which take nothing else (fleet.phoneconf.secrets)."""
        secret_params.validate_field(v)
        return v

    @field_validator("reset")
    @classmethod
    def reset_names(cls, v: list[str], info: ValidationInfo) -> list[str]:
        """Names a rollout may have written: catalogue parameters (or uncatalogued ones in a dotted form), each once,
        none that this playbook also sets."""
        seen: set[str] = set()
        params = info.data.get("params") or {}
        for i, name in enumerate(v):
            if catalogue.lookup(name) is None and not VERBATIM_NAME.match(name):
                raise FieldError((i,), f"{name[:80]}: not a parameter name")
            if name in seen:
                raise FieldError((i,), f"{name} is listed twice")
            if name in params:
                raise FieldError((i,), f"{name} is also in params: a playbook sets a value or resets it, not both")
            seen.add(name)
        return v

    @field_validator("params", mode="before")
    @classmethod
    def known_params(cls, v, info: ValidationInfo):
        if not isinstance(v, dict):
            return v
        verbatim = info.data.get("allow_uncatalogued") is True
        for name, value in v.items():
            try:
                if verbatim and isinstance(name, str) and catalogue.lookup(name) is None:
                    uncatalogued(name, value)
                    continue
                validate.param(name, value, allow_placeholders=True)
            except ValueError as exc:
                message = str(exc)
                if not verbatim and "not a parameter this tool manages" in message:
                    message += "; `allow_uncatalogued: true` passes such parameters through verbatim"
                raise FieldError((name,), message.removeprefix(f"{name}: ")) from None
        return v


VERBATIM_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,63}(\.[A-Za-z0-9_-]{1,64}){1,15}$")


def uncatalogued(name: str, value) -> str:
    """A parameter outside the catalogue, allowed by `allow_uncatalogued`: written as given, so only its form is checked.

    It must look like a Polycom parameter (dotted name, XML-safe), hold no
    control character, no secret reference and no placeholder (nothing is
    substituted in it), and must not be a password: secrets go only in the
    catalogue's secret parameters, which are never shown or logged.
    """
    if not VERBATIM_NAME.match(name):
        raise ValueError(f"{name[:80]}: not a parameter name (dotted, letters, digits, _ and -)")
    if "password" in name.lower():
        raise ValueError(f"{name}: a password is never passed through verbatim; it must be a catalogue secret parameter")
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise ValueError(f"{name}: expected text or an integer, found {type(value).__name__}; quote it")
    text = str(value)
    values.no_control(text, name)
    if secret_params.is_ref(text):
        raise ValueError(f"{name}: secret:/env: references only work in catalogue secret parameters")
    if "{" in text or "}" in text:
        raise ValueError(f"{name}: placeholders only work in catalogue parameters; this one is written verbatim")
    return text


def verbatim_names(pb: RolloutPlaybook) -> frozenset[str]:
    """The playbook's parameters that go through unchecked (none unless it says `allow_uncatalogued: true`)."""
    if not pb.allow_uncatalogued:
        return frozenset()
    return frozenset(n for n in pb.params if catalogue.lookup(n) is None)


def load(path: str | Path) -> RolloutPlaybook:
    """Validate a rollout playbook on its own: fields, parameters, cron, time zone, and the drill file."""
    experiment_playbook.refuse_other_kind(path, "rollout")
    pb = load_model(path, RolloutPlaybook, keep_source=True)
    cycle_s = pb.strategy.power_off_s + policy.POWER_CYCLE_MARGIN_S
    if pb.strategy.power_cycle_fallback and pb.verify.within <= cycle_s:
        # counted from the reboot, so a power-cycled phone would fail by construction, still off or just booting
        raise source_of(pb, path).error(("verify", "within"), (
            f"{pb.verify.within:g} s is not longer than strategy.power_off_s ({pb.strategy.power_off_s:g} s) and "
            f"the switch's work around it ({policy.POWER_CYCLE_MARGIN_S:g} s): a power-cycled phone is off that long "
            "before it can boot and register"))
    if pb.drill is not None:
        src = source_of(pb, path)
        drill = Path(pb.drill)
        if not drill.is_file():
            raise src.error(("drill",), f"drill playbook {pb.drill} not found (relative paths are from the working "
                                        f"directory, {Path.cwd()})")
        try:
            experiment_playbook.load(drill)
        except FileError as exc:
            raise src.error(("drill",), f"the drill playbook is invalid: {exc}") from None
    return pb
