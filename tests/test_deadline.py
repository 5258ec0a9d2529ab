"""Unit tests for the one deadline type, on a fake clock (no sleeping)."""
from __future__ import annotations

from soundpoint.deadline import Deadline, poll_until


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, s: float) -> None:
        self.slept.append(s)
        self.now += s


def test_poll_until_checks_once_more_at_the_deadline():
    clock = FakeClock()
    calls = []

    def check():
        calls.append(clock.now)
        return clock.now >= 103.0      # becomes true exactly at the deadline

    assert poll_until(check, 3.0, 1.0, clock, clock.sleep) is True
    assert calls == [100.0, 101.0, 102.0, 103.0]


def test_poll_until_returns_the_last_falsy_value_and_never_oversleeps():
    clock = FakeClock()
    assert poll_until(lambda: [], 2.5, 1.0, clock, clock.sleep) == []
    assert clock.slept == [1.0, 1.0, 0.5] and clock.now == 102.5


def test_poll_until_returns_at_once_when_true():
    clock = FakeClock()
    assert poll_until(lambda: "yes", 10, 1, clock, clock.sleep) == "yes" and clock.slept == []


def test_deadline_remaining_and_expired():
    clock = FakeClock()
    d = Deadline(5, clock)
    assert d.remaining() == 5 and not d.expired
    clock.now += 7
    assert d.remaining() == 0 and d.expired
