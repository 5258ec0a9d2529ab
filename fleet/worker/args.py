"""What each Celery task accepts, checked in the worker before the task body runs.

Anyone who can write to Redis can put a message on a site's queue, so a
worker treats task arguments as untrusted input: every argument of every task
has a model here (strict types, bounded numbers, identifiers that cannot carry
shell or path syntax), and `validated` refuses a message that does not fit
before anything touches a phone, a router or a file. A refusal raises
TaskArgumentError, so Celery records the task as FAILED with the argument
named; a task never "succeeds" with {"ok": False} for a payload it refused.
"""
from __future__ import annotations

import functools
import inspect
import os
from pathlib import Path
from typing import Annotated, Any, Callable

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError, field_validator

from fleet.base.outage import Outage, OutageId

# Identifiers go into Redis keys, backup file names and log lines: letters, digits and a few separators only
# (no slash, no whitespace, no shell syntax), starting with a letter or digit so none reads as an option.
SiteName = Annotated[str, StringConstraints(strict=True, pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")]
SafeId = Annotated[str, StringConstraints(strict=True, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")]
Mac = Annotated[str, StringConstraints(strict=True, pattern=r"^[0-9a-f]{12}$")]   # the inventory's normal form
PhoneNumber = Annotated[str, StringConstraints(strict=True, pattern=r"^[0-9*#]{1,32}$")]
# Paths appear only where a task really takes a file (scheduled rollouts); no control characters, bounded.
YamlPath = Annotated[str, StringConstraints(strict=True, min_length=1, max_length=4096,
                                            pattern=r"^/[^\x00-\x1f\x7f]*\.ya?ml$")]


class TaskArgumentError(ValueError):
    """A task message whose arguments do not fit the task; the message names the task and the argument.

    Raised in the worker before the task body runs. It takes one string so
    that Celery can store it in the result backend and rebuild it on the
    caller's side.
    """


class TaskArgs(BaseModel):
    """Base of every task's argument model: strict (no coercion of "5" to 5), no unknown arguments."""
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True, allow_inf_nan=False)


class RouterOutageArgs(TaskArgs):
    site_name: SiteName
    exp_id: SafeId
    outage: Outage       # sent as Outage.to_dict(); checked field by field here (an error names `outage.delay_ms`)


class RouterRestoreArgs(TaskArgs):
    site_name: SiteName
    exp_id: SafeId
    outage: Outage       # the one its cut carried: a restore names the outage it ends
    probe_for: float = Field(10.0, ge=0, le=120)


class RouterStateArgs(TaskArgs):
    site_name: SiteName
    outage_id: OutageId | None = None


class PlaceCallArgs(TaskArgs):
    site_name: SiteName
    exp_id: SafeId
    mac: Mac
    number: PhoneNumber


class InboundCallArgs(TaskArgs):
    site_name: SiteName
    exp_id: SafeId
    mac: Mac
    user: Annotated[str, StringConstraints(strict=True, pattern=r"^[0-9A-Za-z*#+._-]{1,64}$")]
    ring_s: int = Field(ge=1, le=300)


class PowerCycleArgs(TaskArgs):
    site_name: SiteName
    exp_id: SafeId
    macs: list[Mac] = Field(min_length=1, max_length=1000)
    off_s: float = Field(gt=0, le=300)


class RolloutPushArgs(TaskArgs):
    rid: SafeId
    mac: Mac
    attempt: int = Field(ge=1, le=1000)


class RolloutRollbackArgs(TaskArgs):
    rid: SafeId
    mac: Mac


class RolloutCleanupArgs(TaskArgs):
    rid: SafeId
    site_name: SiteName


class ScheduledRolloutArgs(TaskArgs):
    playbook_path: YamlPath
    inventory_path: YamlPath
    schedule_name: Annotated[str, StringConstraints(strict=True, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")]
    # the cron time beat fires for, as datetime.isoformat() writes it
    fire_time: Annotated[str, StringConstraints(strict=True, max_length=40,
                                                pattern=r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}(:[0-9]{2}(\.[0-9]{1,6})?)?([+-][0-9]{2}:[0-9]{2}|Z)?$")] | None = None

    @field_validator("inventory_path")
    @classmethod
    def workers_own_inventory(cls, v: str) -> str:
        """A scheduled rollout runs against the inventory this worker was started with, never one a message names."""
        own = os.environ.get("FLEET_INVENTORY")
        if own and Path(v).resolve() != Path(own).resolve():
            raise ValueError("is not the inventory this worker was started with")
        return v


class RolloutTickArgs(TaskArgs):
    rid: SafeId
    # the driver's lease holder, as fleet.rollout.ticks names it: "rollout:<id>:<12 hex digits>"
    holder: Annotated[str, StringConstraints(strict=True, pattern=r"^rollout:[A-Za-z0-9][A-Za-z0-9_.-]{0,127}:[0-9a-f]{12}$")]
    tick: int = Field(ge=1, le=10**9)


def _describe(task: str, exc: ValidationError) -> str:
    parts = []
    for err in exc.errors(include_url=False, include_input=False):
        field = ".".join(str(p) for p in err["loc"]) or "arguments"
        parts.append(f"argument {field}: {err['msg']}")
    return f"{task}: refused: " + "; ".join(parts)


def validated(model: type[TaskArgs]) -> Callable[[Callable], Callable]:
    """Check a task's arguments against `model` before its body runs; refuse with TaskArgumentError.

    Put it under `@app.task` so Celery wraps the checked function. A bound
    task's `self` is passed through unchecked. The model and the function
    must name the same arguments (checked once, at import), so the two
    cannot drift apart.
    """
    def decorate(fn: Callable) -> Callable:
        sig = inspect.signature(fn)
        names = list(sig.parameters)
        bound = bool(names) and names[0] == "self"
        checked = sig.replace(parameters=list(sig.parameters.values())[1:]) if bound else sig
        if set(checked.parameters) != set(model.model_fields):
            raise TypeError(f"{fn.__name__}: arguments {sorted(checked.parameters)} "
                            f"do not match {model.__name__} {sorted(model.model_fields)}")
        task = f"fleet.{fn.__name__}"

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            head, rest = (args[:1], args[1:]) if bound else ((), args)
            try:
                given = checked.bind(*rest, **kwargs).arguments
            except TypeError as exc:
                raise TaskArgumentError(f"{task}: refused: {exc}") from None
            try:
                values = model.model_validate(dict(given))
            except ValidationError as exc:
                raise TaskArgumentError(_describe(task, exc)) from None
            return fn(*head, **{name: getattr(values, name) for name in checked.parameters})

        wrapper.__fleet_args_model__ = model  # type: ignore[attr-defined]
        return wrapper

    return decorate
