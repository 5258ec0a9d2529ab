"""Why an experiment step got no answer it can use from a device task: raised, and typed by what to do about it.

A step sends a task to the site's queue (fleet.experiment.tasks) and reads its
answer. When there is none to use, reading it raises one of these, and the step
turns it into its StepResult (a failed cut, an unconfirmed restore, a dial that
failed). `str()` is what the step's message shows the user:

- TaskRefused: the task ran and failed (TaskFailed from the worker): the
  device and the reason, in the worker's own words. NotReached, a kind of it:
  the task never got to its device, so it did nothing there.
- NoWorker: no answer within the timeout: nobody serves the site's queue, or
  the task is stuck. It names the queue and the command that serves it.
- WorkerLost: the task ended without an answer of its own: its worker died
  under it, or it broke in a way that is not a TaskFailed.
"""
from __future__ import annotations


class StepFailed(Exception):
    """A device task a step depends on gave no answer to use; str() says which task and why."""

    def __init__(self, message: str) -> None:
        super().__init__(str(message)[:300])


class TaskRefused(StepFailed):
    """The task ran and failed: the worker's words (a TaskFailed), e.g. "router 10.1.0.1:22: no SSH answer"."""


class NotReached(TaskRefused):
    """The task never reached its device (a DeviceNotReached from the worker): it did nothing there, e.g. a cut
    that could not connect to the router left the WAN as it was."""


class NoWorker(StepFailed):
    """No answer from any worker of the site's queue in time; the message says how to start one."""

    def __init__(self, task: str, queue: str, site: str, timeout: float) -> None:
        self.task, self.queue, self.site, self.timeout = task, queue, site, timeout
        super().__init__(f"{task}: no answer from a worker of queue {queue} within {timeout:g}s "
                         f"(is `fleet worker --site {site}` running?)")


class WorkerLost(StepFailed):
    """The task ended without an answer of its own (its worker was lost, or it raised something unexpected)."""

    def __init__(self, task: str, exc: BaseException) -> None:
        self.task = task
        super().__init__(f"{task}: {type(exc).__name__}: {exc}")
