"""Ctrl-C, SIGTERM and SIGHUP end an experiment the same way: restore the WAN, then write the report.

A dropped SSH session sends SIGHUP and a service manager SIGTERM; both used to
kill the controller outright while only SIGINT restored the WAN. Inside
`interruptible()` each of the three raises `Interrupted` in the main thread;
inside `signals_deferred()` they are only noted, so a second signal cannot cut
the cleanup short or skip the report. Outside the main thread (a failover drill
run by a rollout worker) both are no-ops: signals belong to the process there.
"""
from __future__ import annotations

import contextlib
import signal
import threading
from typing import Iterator

HANDLED = tuple(s for s in (getattr(signal, "SIGINT", None), getattr(signal, "SIGTERM", None),
                            getattr(signal, "SIGHUP", None)) if s is not None)


class Interrupted(KeyboardInterrupt):
    """A stop signal arrived; a KeyboardInterrupt so that `except Exception` never swallows it."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        self.signame = signal.Signals(signum).name
        super().__init__(self.signame)


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


@contextlib.contextmanager
def _handlers(handler) -> Iterator[None]:
    if not _in_main_thread():
        yield
        return
    previous = {s: signal.signal(s, handler) for s in HANDLED}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


@contextlib.contextmanager
def interruptible() -> Iterator[None]:
    """Turn SIGINT, SIGTERM and SIGHUP into `Interrupted` while the block runs."""
    def raise_interrupted(signum, _frame):
        raise Interrupted(signum)

    with _handlers(raise_interrupted):
        yield


@contextlib.contextmanager
def signals_deferred() -> Iterator[list[str]]:
    """Note SIGINT, SIGTERM and SIGHUP (by name, in the yielded list) instead of acting on them."""
    received: list[str] = []

    def note(signum, _frame):
        received.append(signal.Signals(signum).name)

    with _handlers(note):
        yield received
