"""Rollout playbooks: targets, parameters, strategy, verification, rollback, schedule; validated before anything runs."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from . import secret_params
from .yamlfile import load_model

COUNT_OR_PERCENT = re.compile(r"^(\d+)%?$")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def amount(value: int | str, of: int) -> int:
    """A count (5) or a percent of `of` ("20%", rounded down, at least 1 when `of` > 0)."""
    text = str(value).strip()
    if text.endswith("%"):
        return max(1, int(of * int(text[:-1]) / 100)) if of else 0
    return int(text)


class Targets(Strict):
    sites: list[str] = Field(default=[], description="empty: every site")
    models: list[str] = []
    macs: list[str] = []


class FailureBudget(Strict):
    total: int | str = Field(0, description="failed phones the whole rollout tolerates; more halts it (count or percent)")
    per_site: int | str | None = None

    @field_validator("total", "per_site")
    @classmethod
    def count_or_percent(cls, v):
        if v is not None and not COUNT_OR_PERCENT.match(str(v)):
            raise ValueError("a count (3) or a percent ('5%')")
        return v


class Strategy(Strict):
    canary: int = Field(1, ge=0, description="phones updated and verified first, alone")
    wave_size: int | str = Field("10%", description="phones per wave after the canaries (count or percent)")
    max_unavailable: int | str = Field(1, description="per site, at any moment (count or percent of the site's targets)")
    failure_budget: FailureBudget = FailureBudget()
    progress_deadline: float = Field(600, gt=0, description="seconds a wave may take before the rollout halts")
    allow_overload: bool = False

    @field_validator("wave_size", "max_unavailable")
    @classmethod
    def count_or_percent(cls, v):
        if not COUNT_OR_PERCENT.match(str(v)) or str(v) in ("0", "0%"):
            raise ValueError("a positive count (10) or a percent ('20%')")
        return v


class Verify(Strict):
    registered_to: list[int] = Field(default=[1], min_length=1, description="servers each phone must be registered to")
    within: float = Field(120, gt=0, description="seconds after the reboot")


class Schedule(Strict):
    cron: str = Field(pattern=r"^\S+ \S+ \S+ \S+ \S+$", description="minute hour day-of-month month day-of-week")
    timezone: str = "UTC"


class RolloutPlaybook(Strict):
    kind: Literal["rollout"]
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    targets: Targets = Targets()
    params: dict[str, str | int] = Field(min_length=1)
    strategy: Strategy = Strategy()
    verify: Verify = Verify()
    rollback: bool = True
    drill: str | None = Field(None, description="experiment playbook run on the canary site after the canary wave")
    schedule: Schedule | None = None
    keep_backups: bool = Field(False, description="keep the boot server's <file>.before-<id> backups (they may hold "
                                                  "SIP passwords) after the rollout finished; by default they are "
                                                  "removed once it can no longer be resumed or rolled back")

    @field_validator("params")
    @classmethod
    def secrets_placed(cls, v: dict[str, str | int]) -> dict[str, str | int]:
        """`secret:`/`env:` only in secret parameters, which take nothing else (fleet.secret_params)."""
        secret_params.validate_field(v)
        return v


def load(path: str | Path) -> RolloutPlaybook:
    return load_model(path, RolloutPlaybook)
