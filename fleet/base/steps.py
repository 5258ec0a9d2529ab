"""Step tracing, as labgrid's `@step`: every device step (publish, call check, reboot, cut, restore, state query, test
call) records its start, its end, its outcome and its duration in the append-only event log of the run it serves.

Why one decorator: the history of a rollout or an experiment is what an operator reads after a failure, and steps
traced by hand drift apart (one records a duration, another forgets the failure). The step does not know which
log it writes to: the work that runs it binds the run's log (`journal(...)`), as labgrid binds its step logger, so
drivers and controls stay free of stores and a step run outside any run (a probe, a test) records nothing.

An event is `kind="step"` with `step` (its title), `phase` ("start" or "end"), for the end `outcome` ("ok",
"failed", "interrupted"), `error` (the exception's type and words, secrets removed, at most 300 characters) and
`duration_s` (monotonic), plus the arguments the decorator names. A journal that fails (Redis away) never changes
the step's outcome: the device step is what matters, its trace is best effort and says so in the worker's log.
"""
from __future__ import annotations

import contextlib
import contextvars
import functools
import inspect
import logging
import time
from collections.abc import Callable, Iterator
from typing import Any, ParamSpec, TypeVar

from soundpoint.redact import redact

log = logging.getLogger(__name__)

Journal = Callable[..., None]        # journal(kind, **fields): RolloutStore.log bound to a rollout, Store.log_event ...
ERROR_CHARS = 300

_current: contextvars.ContextVar[Journal | None] = contextvars.ContextVar("fleet_step_journal", default=None)

P = ParamSpec("P")
R = TypeVar("R")


@contextlib.contextmanager
def journal(sink: Journal, **context: Any) -> Iterator[None]:
    """Record the steps run inside this block into `sink`, each event with `context` (e.g. mac=...)."""
    bound: Journal = functools.partial(sink, **context) if context else sink
    token = _current.set(bound)
    try:
        yield
    finally:
        _current.reset(token)


def _write(sink: Journal, **fields: Any) -> None:
    try:
        sink("step", **fields)
    except Exception as exc:   # the trace is best effort: a step must not fail because its log did
        log.warning("step %s: not recorded (%s)", fields.get("step"), type(exc).__name__)


def _error(exc: BaseException) -> str:
    return redact(f"{type(exc).__name__}: {exc}")[:ERROR_CHARS]


@contextlib.contextmanager
def traced(title: str, **fields: Any) -> Iterator[None]:
    """The block as one step of the bound journal (nothing recorded when none is bound)."""
    sink = _current.get()
    if sink is None:
        yield
        return
    started = time.monotonic()
    _write(sink, step=title, phase="start", **fields)
    try:
        yield
    except (KeyboardInterrupt, SystemExit) as exc:
        _write(sink, step=title, phase="end", outcome="interrupted", error=_error(exc),
               duration_s=round(time.monotonic() - started, 6), **fields)
        raise
    except BaseException as exc:
        _write(sink, step=title, phase="end", outcome="failed", error=_error(exc),
               duration_s=round(time.monotonic() - started, 6), **fields)
        raise
    _write(sink, step=title, phase="end", outcome="ok", duration_s=round(time.monotonic() - started, 6), **fields)


def step(title: str | None = None, args: tuple[str, ...] = ()) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Decorate a device step: each call is traced (`traced`), with the named arguments' values as fields.

    Only plain values are recorded (str, int, float, bool, None): an argument holding credentials or a driver
    object is never written, whatever its name.
    """
    def decorate(fn: Callable[P, R]) -> Callable[P, R]:
        name = title or fn.__name__.replace("_", " ").strip()
        signature = inspect.signature(fn)
        unknown = set(args) - set(signature.parameters)
        if unknown:
            raise TypeError(f"@step on {fn.__qualname__}: no argument named {sorted(unknown)}")

        @functools.wraps(fn)
        def wrapper(*a: P.args, **kw: P.kwargs) -> R:
            if _current.get() is None:
                return fn(*a, **kw)
            bound = signature.bind(*a, **kw)
            bound.apply_defaults()
            fields = {k: bound.arguments[k] for k in args
                      if isinstance(bound.arguments[k], (str, int, float, bool, type(None)))}
            with traced(name, **fields):
                return fn(*a, **kw)
        return wrapper
    return decorate
