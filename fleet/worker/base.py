"""What every fleet task shares: its base class, the retry policy for devices, and the conventions below.

The tasks themselves live with their domain: fleet/experiment/tasks.py (the
router and a test call) and fleet/rollout/tasks.py (rollout pushes, rollbacks,
backup removal, scheduled runs). Each one checks its arguments, calls one
plain function, and raises when that fails. The worker's inventory and store
come from `fleet.worker.context`; its collectors start from
`fleet.worker.collectors` (imported here, so every worker connects them).

Conventions, the same for every task:
- Arguments are ids (site name, MAC, rollout id), never secrets, checked by
  `@validated` (fleet/worker/args.py) before the body runs.
- A failure raises. Driver errors and the work's own failures reach the
  result backend as `TaskFailed` with the device and the reason (Flower shows
  FAILURE, the caller's `.get()` raises it); nothing returns `{"ok": False}`.
- Retries are declared on the decorator, and only where repeating the work
  is safe: `DEVICE_RETRY` retries a device that did not answer in time
  (DeviceTimeout covers timeouts and refused connections) with exponential
  backoff and jitter, a few times within seconds. Each task's docstring says
  why it does or does not retry.
- `acks_late`: a task lost with its worker is delivered again, so every task
  is idempotent (outage ids, per-attempt reboot claims, rollout ids).
- No task waits on another task's result: a task that needs another one's
  outcome reads it later, without blocking (see fleet/rollout/tick.py).
"""
from __future__ import annotations

import logging
from typing import Any

from fleet.drivers.errors import DeviceTimeout, DriverError
from fleet.worker.app import app
from fleet.worker.collectors import start_collectors  # noqa: F401  (connects the worker_ready signal)
from fleet.worker.errors import TaskFailed

log = logging.getLogger(__name__)

# A device that did not answer in time may answer a second later (a busy boot server, an SSH server at its
# session limit, a router reloading its firewall). Errors the device answered (DeviceRefused, MalformedAnswer)
# would answer the same again: no retry. Delays: up to 1, 2, 4 s (full jitter), so all tries end within
# seconds, well inside an experiment's task timeout and a rollout's 60 s dispatch-stall window.
TRANSIENT: tuple[type[BaseException], ...] = (DeviceTimeout,)
DEVICE_RETRY: dict[str, Any] = dict(autoretry_for=TRANSIENT, retry_backoff=1, retry_backoff_max=4, retry_jitter=True,
                                    max_retries=3)


class FleetTask(app.Task):
    """Base of every fleet task: a driver error that ends the task becomes TaskFailed (one string, rebuilt as such
    on the caller's side), and expected failures are logged as one line, not as a traceback."""

    throws = (TaskFailed,)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().__call__(*args, **kwargs)
        except DriverError as exc:   # after the retry policy gave up, or one it does not retry
            failed = TaskFailed(str(exc))
        except TaskFailed as exc:
            failed = exc
        log.warning("%s failed: %s", self.name, failed)
        raise failed


def retry_on(task: FleetTask) -> tuple[type[BaseException], ...]:
    """The errors this run may leave to the task's retry policy: none on its last try, or when called directly
    (a test calling the task as a function gets the failure at once)."""
    req = task.request
    if req.called_directly or req.retries >= (task.max_retries or 0):
        return ()
    return tuple(task.autoretry_for or ())
