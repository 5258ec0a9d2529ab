"""A WAN outage as one typed value, and the router's WAN state as another: the one place both are defined.

An experiment's outage used to change form on every hop (a playbook step,
eight positional task values, keyword arguments, a driver spec, shell
arguments) and the router's answer came back as a dict whose keys five files
spelt out. Here:
- `OUTAGE_MODES` is the one list of modes; every `Literal` of modes is built
  from it (`OutageMode`), so a new mode is one word here plus its router
  commands;
- `Outage` is what a playbook asks for, what the cut and restore tasks carry
  (its `to_dict()` form: Celery speaks JSON) and what a driver receives; only
  the driver turns it into shell arguments or SNMP sets;
- `WanState` is what a driver reports about the WAN, and knows what it means:
  whether it `shows` a mode's cut, its `describe`, and the `leftovers` of ours
  after a restore.

It sits in fleet.base because the playbook (experiment), the task arguments
(worker) and the drivers all need it and none of them may import the others.
"""
from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

OUTAGE_MODES = ("link-down", "drop", "degrade", "dns-fail")
# Literal[a tuple] is Literal[its items]: pydantic and typing.get_args see the four modes
OutageMode = Literal[OUTAGE_MODES]  # type: ignore[valid-type]

# Outage ids name files and firewall comments on the router: letters, digits, '_' and '-' only, bounded
OUTAGE_ID = re.compile(r"^[A-Za-z0-9_-]{8,64}$")
OutageId = Annotated[str, StringConstraints(strict=True, pattern=OUTAGE_ID.pattern)]

# The bounds of an outage's numbers, shared by the playbook step and the task argument
MaxDuration = Annotated[int, Field(ge=1, le=86400)]
Loss = Annotated[float, Field(ge=0, le=1)]
DelayMs = Annotated[int, Field(ge=0, le=60000)]
RateKbit = Annotated[int, Field(ge=0, le=10_000_000)]

# The numbers that shape a degrade (README, "What each outage mode needs on a Linux router"): loss, delay, rate.
# Other modes cut outright, so any of them there would be ignored by the router: refused instead.
DEGRADE_FIELDS = ("loss", "delay_ms", "rate_kbit")


def parameter_problem(mode: str, values: dict[str, float]) -> tuple[str, str] | None:
    """(field, why) of the first degrade rule `values` (loss, delay_ms, rate_kbit) break for `mode`; None if none.

    One rule for the playbook (which names the field and its line) and for the task argument (which names the
    argument)."""
    given = [name for name in DEGRADE_FIELDS if values.get(name)]
    if mode == "degrade" and not given:
        return "outage", "a degrade outage needs loss, delay_ms or rate_kbit"
    if mode != "degrade" and given:
        return given[0], f"{given[0]} shapes a degrade outage only; a {mode} outage cuts outright"
    return None


class Outage(BaseModel):
    """One outage the router is asked to make: its identity, its mode, how long at most, and how a degrade degrades.

    Strict, like every task argument: a worker validates the dict a message carries back into this, and no
    driver ever formats an unchecked value into a command."""
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True, allow_inf_nan=False)

    id: OutageId
    mode: OutageMode
    max_duration: MaxDuration = Field(description="seconds; the router restores by itself after this (dead-man's switch)")
    loss: Loss = 0.0
    delay_ms: DelayMs = 0
    rate_kbit: RateKbit = 0

    @model_validator(mode="after")
    def degrade_numbers_fit_the_mode(self) -> "Outage":
        problem = parameter_problem(self.mode, {name: getattr(self, name) for name in DEGRADE_FIELDS})
        if problem is not None:
            raise ValueError(problem[1])
        return self

    def to_dict(self) -> dict[str, Any]:
        """The JSON form a task message carries (the task's argument model validates it back into an Outage)."""
        return self.model_dump(mode="json")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Outage":
        return cls.model_validate(data)


class WanState(BaseModel):
    """The router's WAN as its driver read it: the link, and what of ours (rules, qdisc) is on it.

    Drivers fill in what their platform can see; the rest keeps its neutral default (an SNMP router has no rules).
    Travels in task results as `to_dict()` and is read back with `from_dict()`."""
    model_config = ConfigDict(frozen=True, extra="ignore")

    link_up: bool
    oper_up: bool | None = None          # SNMP's ifOperStatus (the carrier), where the driver reads it
    dropping: bool = False               # a rule of ours drops everything through the WAN
    dns_blocked: bool = False            # a rule of ours drops DNS
    degraded: bool = False               # loss rules or our qdisc
    rules_ours: int = 0                  # firewall rules carrying our tag
    qdisc_ours: bool = False             # a root qdisc under our handle
    root_qdisc: str = ""                 # the WAN's root qdisc as the router prints it (ours or the site's own)
    routes_missing: tuple[str, ...] = ()  # routes saved at a link-down cut that the WAN does not carry (now)
    outage: str | None = None            # the named outage's standing on the router ("cut", "restored by deadman")

    def shows(self, mode: OutageMode) -> bool:
        """Whether this state is what a cut of `mode` makes: a cut the router does not show did not happen."""
        return _SHOWS[mode](self)

    def describe(self, with_outage: bool = True) -> str:
        """The state in words, for step messages and reports; `with_outage=False` leaves the outage's standing out."""
        parts = ["link up" if self.link_up else "link DOWN"]
        if self.rules_ours:
            parts.append(f"{self.rules_ours} rule(s) of ours")
        if self.qdisc_ours:
            parts.append("our qdisc")
        if not self.rules_ours and not self.qdisc_ours:
            parts.append("no rule or qdisc of ours")
        if with_outage and self.outage:
            parts.append(f"outage {self.outage}")
        return ", ".join(parts)

    def leftovers(self) -> list[str]:
        """What of ours the router still shows after a restore: each item is a reason the WAN is not back as it was."""
        left = []
        if not self.link_up:
            left.append("the WAN link is down")
        if self.rules_ours:
            left.append(f"{self.rules_ours} firewall rule(s) of this outage remain")
        if self.qdisc_ours:
            left.append("our qdisc remains on the WAN interface")
        if self.routes_missing and self.link_up:
            left.append(f"{len(self.routes_missing)} route(s) through the WAN not back: {'; '.join(self.routes_missing[:3])}")
        return left

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> "WanState | None":
        """The state a task result carries; None when it carries none (a cut cancelled before the router was asked)."""
        return cls.model_validate(data) if data else None


# what each mode's cut looks like on the router; one entry per mode (checked at import)
_SHOWS = {
    "link-down": lambda s: not s.link_up,
    "drop": lambda s: s.dropping,
    "degrade": lambda s: s.degraded,
    "dns-fail": lambda s: s.dns_blocked,
}
if tuple(_SHOWS) != OUTAGE_MODES:
    raise ImportError("WanState.shows needs one entry per outage mode, in OUTAGE_MODES' order")
