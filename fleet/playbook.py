"""Experiment playbooks: a named list of steps, validated in full before anything runs."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, model_validator

from .yamlfile import FileError, load_model


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Selector(Strict):
    """Which phones a step is about: all of the site's, or some by MAC or model."""
    macs: list[str] = []
    models: list[str] = []


class ExpectStep(Strict):
    expect: Literal["working_server"]
    name: str
    server: int | None = Field(description="1-based server index the phones must work on; null: none")
    within: float = Field(gt=0, description="seconds")
    phones: Selector = Selector()
    measure: Literal["failover", "recovery", "none"] = "none"


class OutageStep(Strict):
    outage: Literal["link-down", "drop", "degrade", "dns-fail"]
    name: str
    max_duration: int = Field(gt=0, le=86400, description="the router restores by itself after this (dead-man's switch)")
    loss: float = Field(0.0, ge=0, le=1)
    delay_ms: int = Field(0, ge=0, le=60000)


class RestoreStep(Strict):
    restore: Literal[True] = True
    name: str


class CallStep(Strict):
    call: str = Field(description="number to dial")
    name: str
    from_phone: str | None = Field(None, description="MAC; default: the first phone with a REST API")
    expect_server: int = Field(ge=1)
    within: float = Field(10.0, gt=0)


class WaitStep(Strict):
    wait: float = Field(gt=0, le=3600)
    name: str


_STEP_KEYS = ("expect", "outage", "restore", "call", "wait")


def _step_kind(value) -> str | None:
    if isinstance(value, dict):
        return next((k for k in _STEP_KEYS if k in value), None)
    return next((k for k in _STEP_KEYS if hasattr(value, k)), None)


Step = Annotated[Union[Annotated[ExpectStep, Tag("expect")], Annotated[OutageStep, Tag("outage")],
                       Annotated[RestoreStep, Tag("restore")], Annotated[CallStep, Tag("call")],
                       Annotated[WaitStep, Tag("wait")]],
                 Discriminator(_step_kind, custom_error_type="step_kind",
                               custom_error_message="each step needs one of: expect, outage, restore, call, wait")]


class ExperimentPlaybook(Strict):
    kind: Literal["experiment"]
    name: str
    site: str
    sample_interval: float = Field(0.25, gt=0, le=10)
    steps: list[Step] = Field(min_length=1)

    @model_validator(mode="after")
    def outages_are_restored(self) -> "ExperimentPlaybook":
        open_outage = False
        for step in self.steps:
            if isinstance(step, OutageStep):
                if open_outage:
                    raise ValueError(f"step {step.name!r}: a second outage before the first is restored")
                open_outage = True
            elif isinstance(step, RestoreStep):
                if not open_outage:
                    raise ValueError(f"step {step.name!r}: restore without an outage")
                open_outage = False
        names = [s.name for s in self.steps]
        if len(set(names)) != len(names):
            raise ValueError("step names must be unique")
        return self


def load(path: str | Path) -> ExperimentPlaybook:
    return load_model(path, ExperimentPlaybook)


def check_against(playbook: ExperimentPlaybook, inventory, path: str) -> None:
    """Cross-checks that need the inventory; raises FileError naming the playbook."""
    from .drivers.router import supported_modes

    try:
        site = inventory.site(playbook.site)
    except KeyError as exc:
        raise FileError(path, None, "site", str(exc.args[0])) from None
    for i, step in enumerate(playbook.steps):
        if isinstance(step, OutageStep):
            if site.router is None:
                raise FileError(path, None, f"steps[{i}]", f"site {site.name} has no router to cut")
            if step.outage not in supported_modes(site.router.driver):
                raise FileError(path, None, f"steps[{i}].outage",
                                f"mode {step.outage} is not supported by router driver {site.router.driver}")
        if isinstance(step, CallStep):
            macs = {p.mac for p in site.phones if p.has_rest}
            if step.from_phone and step.from_phone.lower() not in {p.mac for p in site.phones}:
                raise FileError(path, None, f"steps[{i}].from_phone", f"{step.from_phone} is not a phone of site {site.name}")
            if not macs:
                raise FileError(path, None, f"steps[{i}]", f"site {site.name} has no phone with a REST API to place a call")
        if isinstance(step, ExpectStep):
            known = {p.mac for p in site.phones}
            for mac in step.phones.macs:
                if mac.lower().replace(":", "") not in known:
                    raise FileError(path, None, f"steps[{i}].phones.macs", f"{mac} is not a phone of site {site.name}")
