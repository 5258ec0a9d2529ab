"""The one exception a task's work raises when it fails for a reason worth showing.

Celery keeps a failed task's exception in the result backend as JSON (its
class and its `args`) and rebuilds it on the caller's side by calling the
class with those args. Driver errors take two arguments (device, message)
and would come back as a bare `Exception` with a mangled text; `TaskFailed`
takes one string, so the caller sees the same class and the same words the
worker saw ("router 10.1.0.1:22: no SSH answer within 10s").
"""
from __future__ import annotations


class TaskFailed(Exception):
    """A task's work failed: the device or record, and why. Never carries a secret (driver errors are redacted)."""

    def __init__(self, message: str) -> None:
        super().__init__(str(message)[:500])


class DeviceNotReached(TaskFailed):
    """The task never reached its device (no connection, or no login): it did nothing there. A caller may rely on
    that: a WAN cut refused this way was never made, so there is nothing to restore and no outage to draw."""


def failure_text(exc: BaseException) -> str:
    """What a failure says to a person: a KeyError's message without the quotes its str() adds."""
    if isinstance(exc, KeyError) and exc.args:
        return str(exc.args[0])
    return str(exc)
