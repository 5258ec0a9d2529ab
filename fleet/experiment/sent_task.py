"""A device task an experiment step sent to its site's queue, and its answer read without ever blocking.

No task may wait on another task (Celery warns against synchronous subtasks: a
worker whose only slot runs the waiting task never runs the awaited one). So a
step never calls `result.get()`: it sends the task, keeps a `SentTask` (plain
data, kept in Redis between the ticks of a scheduled rollout's drill), and
looks at it again later with `answer()`, which only reads the result backend.
A caller outside any task (`fleet experiment run`) looks again every few
milliseconds; a tick looks once and comes back on its next tick.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass

from celery import Signature

from fleet.experiment.failures import NotReached, NoWorker, TaskRefused, WorkerLost
from fleet.worker.app import app
from fleet.worker.errors import DeviceNotReached, TaskFailed


@dataclass(frozen=True)
class SentTask:
    task: str          # the task's name, e.g. "fleet.router_outage"
    id: str            # its Celery task id: where its answer appears in the result backend
    queue: str         # the site's queue it was sent to
    site: str
    sent_at: float     # wall-clock time it was sent (ticks of one drill may run in different processes)
    timeout: float     # seconds after which no answer means NoWorker

    @classmethod
    def send(cls, sig: Signature, queue: str, site: str, timeout: float, expires: float | None = None) -> "SentTask":
        """Send `sig` to `queue`; `expires`: seconds after which no worker may start it any more."""
        sent_at = time.time()
        result = sig.apply_async(queue=queue, expires=expires)
        return cls(sig.task, result.id, queue, site, sent_at, timeout)

    def answer(self, now: float | None = None) -> dict | None:
        """The task's answer once it has one, None while it may still come; never blocks.

        Raises TaskRefused (the task failed and said why; NotReached when it never got to its device), NoWorker (no answer
        within `timeout`) or WorkerLost (it ended without an answer of its own).
        """
        result = app.AsyncResult(self.id)
        if not result.ready():
            if (now if now is not None else time.time()) - self.sent_at >= self.timeout:
                raise NoWorker(self.task, self.queue, self.site, self.timeout)
            return None
        if result.successful():
            return result.result
        failure = result.result   # the backend rebuilds the task's exception
        if isinstance(failure, DeviceNotReached):
            raise NotReached(str(failure))
        if isinstance(failure, TaskFailed):
            raise TaskRefused(str(failure))
        raise WorkerLost(self.task, failure if isinstance(failure, BaseException) else RuntimeError(str(failure)))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "SentTask":
        return cls(**data)
