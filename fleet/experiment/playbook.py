"""Experiment playbooks: a named list of steps, validated in full before anything runs."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal, Union

from pydantic import Discriminator, Field, Tag, field_validator, model_validator

from soundpoint import values
from soundpoint.strict import Strict
from soundpoint.yamlfile import FieldError, FileError, line_of, load_model, read_mapping, source_of

from fleet.base.outage import DEGRADE_FIELDS, DelayMs, Loss, MaxDuration, Outage, OutageMode, RateKbit, parameter_problem
from fleet.config import validate
from fleet.drivers.router import supported_modes
from fleet.experiment import flap_plan, inbound_answers
from fleet.phoneconf import predict

MAX_SECONDS = 86400.0


StepName = Annotated[str, Field(min_length=1, max_length=200)]


class Selector(Strict):
    """Which phones a step is about: all of the site's, or some by MAC or model."""
    macs: validate.MacList = []
    models: validate.ModelList = []


class _Named(Strict):
    name: StepName

    @field_validator("name")
    @classmethod
    def printable(cls, v: str) -> str:
        return values.no_control(v, "step name")


class ExpectStep(_Named):
    expect: Literal["working_server"]
    server: int | None = Field(ge=1, le=9, description="1-based server index the phones must work on; null: none")
    within: float = Field(gt=0, le=MAX_SECONDS, description="seconds")
    phones: Selector = Selector()
    measure: Literal["failover", "recovery", "none"] = "none"


class OutageStep(_Named):
    """An outage as the playbook writes it (`outage: MODE`); `to_outage` makes the Outage the router is sent."""
    outage: OutageMode
    max_duration: MaxDuration = Field(description="the router restores by itself after this (dead-man's switch)")
    loss: Loss = Field(0.0, description="degrade: the fraction of packets dropped each way")
    delay_ms: DelayMs = Field(0, description="degrade: added delay (needs the router kernel's sch_netem)")
    rate_kbit: RateKbit = Field(0, description="degrade: the WAN's rate limit")

    @model_validator(mode="after")
    def degrade_numbers_fit_the_mode(self) -> "OutageStep":
        problem = parameter_problem(self.outage, {name: getattr(self, name) for name in DEGRADE_FIELDS})
        if problem is not None:
            raise FieldError((problem[0],), problem[1])
        return self

    def to_outage(self, outage_id: str) -> Outage:
        return Outage(id=outage_id, mode=self.outage, max_duration=self.max_duration, loss=self.loss,
                      delay_ms=self.delay_ms, rate_kbit=self.rate_kbit)


class RestoreStep(_Named):
    restore: Literal[True] = True


class CallStep(_Named):
    call: str = Field(pattern=r"^[0-9A-Za-z*#+._-]{1,64}$", description="number to dial")
    from_phone: str | None = Field(None, description="MAC; default: the first phone with a REST API")
    expect_server: int = Field(ge=1, le=9)
    within: float = Field(10.0, gt=0, le=MAX_SECONDS)

    @field_validator("call", mode="before")
    @classmethod
    def number_as_text(cls, v):
        # `call: 2000` is a number to YAML; a dial string it is meant to be (but not 2.0e3 or true)
        return str(v) if isinstance(v, int) and not isinstance(v, bool) and v >= 0 else v

    @field_validator("from_phone", mode="before")
    @classmethod
    def a_mac(cls, v):
        return None if v is None else values.mac(v)


class WaitStep(_Named):
    wait: float = Field(gt=0, le=3600)


class InboundStep(_Named):
    """The site's gateway calls each selected phone's line (fleet.experiment.inbound_step): during an outage, the
    phones that would miss calls and why; before it, the control."""
    expect: Literal["inbound_via_fallback"]
    phones: Selector = Selector()
    ring_s: int = Field(8, ge=1, le=300, description="seconds a call may ring before it counts as unanswered "
                                                     "(below the router's command timeout)")


class PowerSpec(Strict):
    """`power: {phones: {macs, models}, off_s: N}`: the selected phones' PoE ports go off together for N seconds."""
    phones: Selector = Selector()
    off_s: float = Field(gt=0, le=300, description="seconds the ports stay off (fleet.drivers.switch.MAX_OFF_S)")


class PowerStep(_Named):
    power: PowerSpec


class Flap(Strict):
    """A flapping WAN as the playbook writes it: `flap: {mode: drop, cycles: 5, down_s: 10, up_s: 10}`
    (fleet.experiment.flap_plan computes the plan; fleet.experiment.flap_run runs it)."""
    mode: OutageMode
    cycles: int = Field(ge=1, le=100)
    down_s: float = Field(gt=0, le=3600, description="each cut's length")
    up_s: float = Field(gt=0, le=3600, description="the WAN's time up after each cut (the last one's too)")
    jitter_s: float = Field(0.0, ge=0, le=3600, description="each down and up time moves by up to this either way")
    seed: int | None = Field(None, ge=0, le=2**63 - 1, description="the jitter's random seed (same seed, same plan)")
    deadman_margin_s: float = Field(10.0, ge=1, le=3600, description="each cut's dead-man fires this long after "
                                                                     "its planned end")
    loss: Loss = 0.0
    delay_ms: DelayMs = 0
    rate_kbit: RateKbit = 0

    @model_validator(mode="after")
    def numbers_fit(self) -> "Flap":
        problem = parameter_problem(self.mode, {name: getattr(self, name) for name in DEGRADE_FIELDS})
        if problem is not None:
            raise FieldError((problem[0] if problem[0] != "outage" else "mode",), problem[1])
        jitter = flap_plan.jitter_problem(self.down_s, self.up_s, self.jitter_s)
        if jitter is not None:
            raise FieldError(("jitter_s",), jitter)
        if self.jitter_s and self.seed is None:
            raise FieldError(("seed",), "a jittered flap needs a seed: the plan must be the same on every run")
        if self.cycles * (self.down_s + self.up_s + 2 * self.jitter_s) > MAX_SECONDS:
            raise FieldError(("cycles",), f"the flap would last over {MAX_SECONDS:g} s")
        return self

    def plan(self) -> flap_plan.FlapPlan:
        return flap_plan.plan(self.mode, self.cycles, self.down_s, self.up_s, self.jitter_s, self.seed,
                              self.deadman_margin_s)


class FlapStep(_Named):
    flap: Flap


_STEP_KEYS = ("expect", "outage", "restore", "call", "wait", "power", "flap")
INBOUND = "inbound_via_fallback"


def _step_kind(value) -> str | None:
    if (value.get("expect") if isinstance(value, dict) else getattr(value, "expect", None)) == INBOUND:
        return "step:inbound"
    if isinstance(value, dict):
        kinds = [k for k in _STEP_KEYS if k in value]
    else:
        kinds = [k for k in _STEP_KEYS if hasattr(value, k)]
    return f"step:{kinds[0]}" if len(kinds) == 1 else None


Step = Annotated[Union[Annotated[ExpectStep, Tag("step:expect")], Annotated[OutageStep, Tag("step:outage")],
                       Annotated[RestoreStep, Tag("step:restore")], Annotated[CallStep, Tag("step:call")],
                       Annotated[WaitStep, Tag("step:wait")], Annotated[InboundStep, Tag("step:inbound")],
                       Annotated[PowerStep, Tag("step:power")], Annotated[FlapStep, Tag("step:flap")]],
                 Discriminator(_step_kind, custom_error_type="step_kind",
                               custom_error_message="each step needs exactly one of: " + ", ".join(_STEP_KEYS))]


class ExperimentPlaybook(Strict):
    kind: Literal["experiment"]
    name: str = Field(min_length=1, max_length=200)
    site: str = Field(pattern=r"^[a-z0-9][a-z0-9-]{0,30}$")
    sample_interval: float = Field(0.25, gt=0, le=10)
    steps: list[Step] = Field(min_length=1, max_length=1000)

    @field_validator("name")
    @classmethod
    def printable(cls, v: str) -> str:
        return values.no_control(v, "name")

    @model_validator(mode="after")
    def outages_are_restored(self) -> "ExperimentPlaybook":
        open_outage = False
        names: dict[str, int] = {}
        for i, step in enumerate(self.steps):
            if isinstance(step, OutageStep):
                if open_outage:
                    raise FieldError(("steps", i, "outage"), f"step {step.name!r}: a second outage before the first is restored")
                open_outage = True
            elif isinstance(step, FlapStep) and open_outage:
                raise FieldError(("steps", i, "flap"), f"step {step.name!r}: a flap while an outage is open "
                                                       "(restore it first)")
            elif isinstance(step, RestoreStep):
                if not open_outage:
                    raise FieldError(("steps", i, "restore"), f"step {step.name!r}: restore without an outage")
                open_outage = False
            if step.name in names:
                raise FieldError(("steps", i, "name"), f"step name {step.name!r} is also used by steps[{names[step.name]}]; "
                                                       "step names must be unique")
            names[step.name] = i
        return self


# the playbook kinds and the command that runs each: a playbook given to the other command is pointed to its own
RUN_COMMANDS = {"experiment": "fleet experiment run", "rollout": "fleet rollout run"}


def refuse_other_kind(path: str | Path, expected: str) -> None:
    """A playbook of another kind (a rollout playbook given to `fleet experiment run`, or the reverse) is named
    as such with the command that runs it, instead of failing on its first field this kind does not have."""
    data, node = read_mapping(path)
    kind = data.get("kind")
    if kind != expected and isinstance(kind, str) and kind in RUN_COMMANDS:
        raise FileError(path, line_of(node, ("kind",)), "kind",
                        f"{path} is {'an' if kind[0] in 'aeiou' else 'a'} {kind} playbook (kind: {kind}): "
                        f"use `{RUN_COMMANDS[kind]} {path}`")


def load(path: str | Path) -> ExperimentPlaybook:
    refuse_other_kind(path, "experiment")
    return load_model(path, ExperimentPlaybook, keep_source=True)


def check_against(playbook: ExperimentPlaybook, inventory, path: str, extra_params: dict | None = None) -> None:
    """Cross-checks that need the inventory; raises FileError naming the playbook's file, line and field.

    Servers are checked against each selected phone's configuration: `server: 3` on phones that have
    two servers can never hold, and would only show up as a failed experiment after a WAN cut.
    extra_params: parameters applied on top of the inventory's (a rollout's, for its drill).
    """
    src = source_of(playbook, path)
    try:
        site = inventory.site(playbook.site)
    except KeyError as exc:
        raise src.error(("site",), str(exc.args[0]) + values.did_you_mean(playbook.site, [s.name for s in inventory.sites])) from None
    by_mac = {p.mac: p for p in site.phones}
    extra = {k: str(v) for k, v in (extra_params or {}).items()}
    counts = {p.mac: len(predict.servers(inventory.effective_params(site, p) | extra)) for p in site.phones}
    for i, step in enumerate(playbook.steps):
        if isinstance(step, (OutageStep, FlapStep)):
            where, mode = (("steps", i, "outage"), step.outage) if isinstance(step, OutageStep) else \
                (("steps", i, "flap", "mode"), step.flap.mode)
            if site.router is None:
                raise src.error(where, f"site {site.name} has no router to cut")
            if mode not in supported_modes(site.router.driver):
                raise src.error(where, f"mode {mode} is not supported by router driver {site.router.driver}")
        if isinstance(step, CallStep):
            macs = {p.mac for p in site.phones if p.family.rest}
            if step.from_phone and step.from_phone not in by_mac:
                raise src.error(("steps", i, "from_phone"), f"{step.from_phone} is not a phone of site {site.name}")
            if not macs:
                raise src.error(("steps", i, "call"), f"site {site.name} has no phone with a REST API to place a call")
            _check_server(src, ("steps", i, "expect_server"), step.expect_server, counts.values(), site.name)
        if isinstance(step, InboundStep):
            inbound_answers.check(step, site, src, ("steps", i, "expect"))
        if isinstance(step, PowerStep):
            _check_power(src, ("steps", i, "power"), step.power, site, by_mac)
        if isinstance(step, (ExpectStep, InboundStep)):
            for j, mac in enumerate(step.phones.macs):
                if mac not in by_mac:
                    raise src.error(("steps", i, "phones", "macs", j), f"{mac} is not a phone of site {site.name}"
                                    + values.did_you_mean(mac, by_mac))
            for j, model in enumerate(step.phones.models):
                if not any(p.model == model for p in site.phones):
                    raise src.error(("steps", i, "phones", "models", j), f"site {site.name} has no {model} phone")
        if isinstance(step, ExpectStep):
            chosen = [counts[p.mac] for p in site.phones
                      if (not step.phones.macs or p.mac in step.phones.macs)
                      and (not step.phones.models or p.model in step.phones.models)]
            if step.server is not None:
                _check_server(src, ("steps", i, "server"), step.server, chosen, site.name)


def _check_power(src, loc: tuple, power: PowerSpec, site, by_mac: dict) -> None:
    """A power step's phones exist at the site and each has a PoE port in the inventory (`poe`)."""
    for j, mac in enumerate(power.phones.macs):
        if mac not in by_mac:
            raise src.error(loc + ("phones", "macs", j), f"{mac} is not a phone of site {site.name}"
                            + values.did_you_mean(mac, by_mac))
    chosen = [p for p in site.phones if (not power.phones.macs or p.mac in power.phones.macs)
              and (not power.phones.models or p.model in power.phones.models)]
    if not chosen:
        raise src.error(loc + ("phones",), f"no phone of site {site.name} is selected")
    unpowered = [p.mac for p in chosen if p.poe is None]
    if unpowered:
        raise src.error(loc + ("phones",), f"{values.plural(len(unpowered), 'selected phone')} of site {site.name} "
                                           f"{'has' if len(unpowered) == 1 else 'have'} no poe port in the inventory: "
                                           f"{', '.join(unpowered[:5])}")


def _check_server(src, loc: tuple, index: int, counts, site: str) -> None:
    counts = list(counts)
    if counts and index > min(counts):
        raise src.error(loc, f"server {index} does not exist: phones of site {site} have "
                             f"{min(counts)}{'' if min(counts) == max(counts) else '-' + str(max(counts))} server(s) configured")
