"""Ctrl-C, SIGTERM and SIGHUP end an experiment the same way: restore the WAN, then write the report.

A dropped SSH session sends SIGHUP and a service manager SIGTERM; both used to
kill the controller outright while only SIGINT restored the WAN. Under a
`SignalGuard` the first of the three raises `Interrupted` in the main thread
and every later one is only noted, so a second signal cannot cut the cleanup
short or skip the report. Outside the main thread (a failover drill run by a
rollout worker) the guard installs nothing: signals belong to the process there.
"""
from __future__ import annotations

import signal
import threading

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


class SignalGuard:
    """One handler for a whole run: the first stop signal raises `Interrupted`, and from that moment on (or from
    `defer()`) every later one is only noted in `received`.

    Switching inside the handler itself leaves no window in which a second
    signal meets the default handler (SIGTERM would kill the process before
    the restore; SIGINT would skip the report). Outside the main thread it
    installs nothing.
    """

    def __init__(self) -> None:
        self.raising = True
        self.received: list[str] = []
        self._previous: dict = {}

    def _handle(self, signum, _frame) -> None:
        if self.raising:
            self.raising = False
            raise Interrupted(signum)
        self.received.append(signal.Signals(signum).name)

    def defer(self) -> None:
        self.raising = False

    def __enter__(self) -> "SignalGuard":
        if _in_main_thread():
            self._previous = {s: signal.signal(s, self._handle) for s in HANDLED}
        return self

    def __exit__(self, *exc) -> bool:
        for s, h in self._previous.items():
            signal.signal(s, h)
        return False
