"""One deadline type for every "until it holds or time runs out" loop.

Hand-written loops each got the monotonic clock, the last check and the
sleep slightly differently (one checked after its deadline, one never slept
on the last round). `Deadline` measures on the monotonic clock, and
`poll_until` always checks once more at the deadline, so a condition that
becomes true during the last sleep is still seen.
"""
from __future__ import annotations

import time
from typing import Callable, TypeVar

T = TypeVar("T")


class Deadline:
    def __init__(self, seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.seconds = seconds
        self.at = clock() + seconds

    def remaining(self) -> float:
        return max(0.0, self.at - self.clock())

    @property
    def expired(self) -> bool:
        return self.clock() >= self.at

    def sleep(self, step: float, sleep: Callable[[float], None] = time.sleep) -> None:
        """Sleep `step`, or less if the deadline comes first."""
        sleep(min(step, self.remaining()))


def poll_until(check: Callable[[], T], seconds: float, step: float,
               clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep) -> T:
    """Call `check` every `step` seconds until it returns something truthy or `seconds` pass; return its last value."""
    deadline = Deadline(seconds, clock)
    while True:
        value = check()
        if value or deadline.expired:
            return value
        deadline.sleep(step, sleep)
