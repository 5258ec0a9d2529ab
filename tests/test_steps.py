"""Step tracing (fleet.base.steps): what a traced device step writes into the run's event log."""
from __future__ import annotations

import pytest

from fleet.base import steps


class Log:
    def __init__(self, fail: bool = False) -> None:
        self.events: list[dict] = []
        self.fail = fail

    def __call__(self, kind: str, **fields) -> None:
        if self.fail:
            raise ConnectionError("redis away")
        self.events.append({"kind": kind, **fields})


@steps.step("reboot", args=("mac", "creds"))
def reboot(mac: str, creds: object, fail: bool = False) -> str:
    if fail:
        raise TimeoutError("no answer from http://admin:s3cret@10.0.0.9/")
    return "check-sync"


def test_a_step_records_start_and_end_with_outcome_duration_and_plain_arguments():
    log = Log()
    with steps.journal(log, rollout="r1"):
        assert reboot("0004f2000001", object()) == "check-sync"
    start, end = log.events
    assert start == {"kind": "step", "rollout": "r1", "step": "reboot", "phase": "start", "mac": "0004f2000001"}
    assert end["phase"] == "end" and end["outcome"] == "ok" and end["mac"] == "0004f2000001"
    assert 0 <= end["duration_s"] < 5
    assert "creds" not in end          # not a plain value: never written


def test_a_failed_step_is_recorded_failed_with_its_error_without_secrets_and_still_raises():
    log = Log()
    with steps.journal(log), pytest.raises(TimeoutError):
        reboot("0004f2000001", None, fail=True)
    end = log.events[-1]
    assert end["outcome"] == "failed" and end["error"].startswith("TimeoutError: no answer")
    assert "s3cret" not in end["error"]


def test_an_interrupted_step_says_so():
    log = Log()
    with steps.journal(log), pytest.raises(KeyboardInterrupt), steps.traced("cut", site="hq"):
        raise KeyboardInterrupt
    assert log.events[-1]["outcome"] == "interrupted" and log.events[-1]["site"] == "hq"


def test_no_journal_bound_records_nothing_and_a_failing_journal_never_fails_the_step():
    assert reboot("0004f2000001", None) == "check-sync"          # outside any run
    with steps.journal(Log(fail=True)):
        assert reboot("0004f2000001", None) == "check-sync"


def test_the_journal_is_unbound_after_its_block_even_on_error():
    log = Log()
    with pytest.raises(ValueError), steps.journal(log):
        raise ValueError
    reboot("0004f2000001", None)
    assert log.events == []


def test_naming_an_argument_the_step_does_not_have_is_refused_at_import():
    with pytest.raises(TypeError, match="no argument named"):
        @steps.step("x", args=("nope",))
        def f(mac: str) -> None: ...
