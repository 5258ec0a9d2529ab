"""Unit tests for experiment verdicts: the edge cases, without Redis or a lab."""
from __future__ import annotations

import pytest

from fleet.experiment.verdict import (Expectation, OutageWindow, PhoneVerdict, Reached, first_change, judge_phone, summary,
                           timeline)

MAC = "00040a000001"
FAIL = Expectation("fall back", server=2, within=20, measure="failover")
BACK = Expectation("come back", server=1, within=20, measure="recovery")


def _obs(t: float, ws: int | None, kind: str = "registration") -> dict:
    return {"t": t, "working_server": ws, "kind": kind, "source": "syslog"}


def _verdict(**kw) -> PhoneVerdict:
    return PhoneVerdict(mac=MAC, model="SoundPoint IP 650", predicted_failover_max_s=kw.pop("fail_max", 20.0),
                        predicted_recovery_max_s=kw.pop("back_max", 10.0))


def test_failover_and_recovery_are_measured_from_the_first_observation_after_the_confirmed_window():
    obs = [_obs(99, 1), _obs(107.5, 2), _obs(108, 2), _obs(203.2, 1)]
    seen = {"fall back": Reached({MAC: 109.0}, {}), "come back": Reached({MAC: 204.0}, {})}
    v = judge_phone(_verdict(), 2, [FAIL, BACK], seen, obs, OutageWindow(100.0, 200.0))
    assert v.passed and v.reasons == []
    assert v.failover_s == 7.5 and v.recovery_s == 3.2
    assert [c["passed"] for c in v.checks] == [True, True]


def test_a_return_between_the_restore_request_and_the_routers_answer_is_0_s_not_the_next_refresh():
    """A link-down restore answers once its routes are back: a phone may be on server 1 by then. Measured from
    the answer only, the next refresh (here 1.5 s later) was taken for the return (a namespace-lab run, 1.58 s
    off the ground truth)."""
    obs = [_obs(99, 1), _obs(107.5, 2), _obs(199.7, 1), _obs(201.5, 1)]
    seen = {"fall back": Reached({MAC: 109.0}, {}), "come back": Reached({MAC: 202.0}, {})}
    v = judge_phone(_verdict(), 2, [FAIL, BACK], seen, obs, OutageWindow(100.0, 200.0, 99.9, 199.5))
    assert v.recovery_s == 0.0 and v.failover_s == 7.5, v
    # a return from before the restore was asked for is not this restore's
    v = judge_phone(_verdict(), 2, [FAIL, BACK], seen, [_obs(99, 1), _obs(107.5, 2), _obs(199.4, 1), _obs(201.5, 1)],
                    OutageWindow(100.0, 200.0, 99.9, 199.5))
    assert v.recovery_s == 1.5, v


def test_measured_time_over_the_predicted_bound_fails_with_both_figures():
    obs = [_obs(125, 2)]
    v = judge_phone(_verdict(fail_max=20.0), 2, [FAIL], {"fall back": Reached({MAC: 125.0}, {})}, obs,
                    OutageWindow(100.0, 200.0))
    assert not v.passed and v.failover_s == 25.0
    assert "25.0s" in v.reasons[0] and "20.0s" in v.reasons[0]


def test_phone_that_never_reports_fails_naming_where_it_was():
    v = judge_phone(_verdict(), 2, [FAIL], {"fall back": Reached({}, {MAC: 1})}, [], OutageWindow(100.0, 200.0))
    assert not v.passed and v.failover_s is None
    assert "never moved to server 2 within 20s; working server was 1" in v.reasons[0]


def test_step_that_never_ran_fails_the_phone():
    v = judge_phone(_verdict(), 2, [FAIL], {"fall back": None}, [], None)
    assert not v.passed and v.checks == [{"name": "fall back", "passed": False, "message": "not run"}]


def test_expectation_that_did_not_select_the_phone_is_not_checked():
    v = judge_phone(_verdict(), 2, [FAIL], {}, [], None)
    assert v.passed and v.checks == []


def test_no_fallback_server_fails_even_when_every_step_held():
    v = judge_phone(_verdict(), 1, [FAIL], {"fall back": Reached({MAC: 101.0}, {})}, [_obs(101, 2)], OutageWindow(100, 200))
    assert not v.passed and "no fallback server configured" in v.reasons[0]


def test_outage_never_confirmed_restored_measures_no_recovery():
    v = judge_phone(_verdict(), 2, [BACK], {"come back": Reached({MAC: 250.0}, {})}, [_obs(250, 1)], OutageWindow(100, None))
    assert v.passed and v.recovery_s is None


def test_cancelled_outage_measures_nothing_but_still_checks_reaching():
    v = judge_phone(_verdict(), 2, [FAIL], {"fall back": Reached({MAC: 101.0}, {})}, [_obs(101, 2)], None)
    assert v.passed and v.failover_s is None


def test_reached_time_is_used_when_no_observation_shows_the_change():
    # the expect step saw it (from the status rows) but the observation stream was trimmed
    v = judge_phone(_verdict(), 2, [FAIL], {"fall back": Reached({MAC: 104.0}, {})}, [_obs(90, 1)], OutageWindow(100, 200))
    assert v.failover_s == 4.0


def test_first_change_ignores_calls_and_earlier_observations():
    obs = [_obs(90, 2), _obs(101, 2, kind="call"), _obs(102, 1), _obs(103, 2)]
    assert first_change(obs, 2, 100) == 103
    assert first_change(obs, 3, 100) is None


def test_timeline_starts_with_the_state_at_start_only_when_it_was_observed():
    obs = [_obs(101.23456, 2)]
    assert timeline(obs, {"observed_at": 50, "working_server": 1}, 100.0)[0] == {
        "t": 100.0, "working_server": 1, "source": "state at start", "server": None, "state": None, "kind": "registration"}
    assert len(timeline(obs, {"working_server": 1}, 100.0)) == 1
    assert timeline(obs, None, 100.0)[0]["t"] == 101.235


@pytest.mark.parametrize("values,expected", [([], {"count": 0, "p50": None, "p95": None, "max": None}),
                                             ([3.0], {"count": 1, "p50": 3.0, "p95": 3.0, "max": 3.0})])
def test_summary_of_empty_and_single(values, expected):
    assert summary(values) == expected


def test_summary_percentiles_interpolate():
    s = summary([float(i) for i in range(1, 101)])
    assert s["p50"] == pytest.approx(50.5) and s["p95"] == pytest.approx(95.05) and s["max"] == 100.0


def test_fallback_behaviour_tells_the_two_readings_of_reregister_on_apart():
    from fleet.experiment.verdict import OutageWindow, fallback_behaviour
    cut = OutageWindow(start=100.0, end=130.0)
    before = [{"t": 90.0, "server": 2, "state": "registered", "source": "syslog"}]
    after = [{"t": 110.0, "server": 2, "state": "registered", "source": "syslog", "working_server": 2}]
    assert fallback_behaviour(before + after, None, cut, 60) == "concurrent"
    assert fallback_behaviour(after, None, cut, 60) == "on-failure"
    assert fallback_behaviour([], None, cut, 60) == "none"
    assert fallback_behaviour(after, None, None, 60) is None
    # a gateway binding left from an earlier failover is not the phone registering there now
    stale = [{"t": 90.0, "server": 2, "state": "registered", "source": "gateway"}]
    assert fallback_behaviour(stale + after, None, cut, 60) == "on-failure"
    # the state at the start counts while that registration can still be valid
    assert fallback_behaviour(after, {"2": {"state": "registered", "t": 70.0, "source": "wire"}}, cut, 60) == "concurrent"
    assert fallback_behaviour(after, {"2": {"state": "registered", "t": 10.0, "source": "wire"}}, cut, 60) == "on-failure"


def test_a_failover_that_cannot_happen_says_why_first():
    from fleet.experiment.verdict import Expectation, PhoneVerdict, Reached, judge_phone
    why = ("on uc-5.x a phone registers with a fallback server only with failOver.reRegisterOn=1 (default 0: it "
           "assumes the servers share registrations); server 2 will not see a REGISTER")
    v = PhoneVerdict(mac="m", model="VVX 410", prediction_notes=[f"failover: {why}"])
    judge_phone(v, 2, [Expectation("fall back", 2, 30, "failover")], {"fall back": Reached({}, {"m": None})}, [], None)
    assert not v.passed and v.reasons[0].startswith(f"fall back: {why}; never moved to server 2")


# ------------------------------------------------------------------ evidence that only bounds a moment (issue 17)
def _reg(t: float, server: int, state: str, ws: int | None, earliest: float | None = None) -> dict:
    return {"t": t, "working_server": ws, "kind": "registration", "source": "wire", "server": server,
            "state": state, **({"earliest": earliest} if earliest is not None else {})}


def test_a_lapse_that_straddles_the_bound_is_undetermined_with_its_interval_not_failed():
    """The demo's blind spot: server 2 registered 3.5 s into the outage, server 1's binding lapsed at 11.1 s: the
    phone moved somewhere in [3.5, 11.1] s; with a 10 s bound the evidence cannot fail it."""
    obs = [_reg(99, 1, "registered", 1), _reg(103.5, 2, "registered", 1),
           _reg(111.1, 1, "unregistered", 2, earliest=99.0)]
    v = judge_phone(_verdict(fail_max=10.0), 2, [FAIL], {"fall back": Reached({MAC: 111.3}, {})}, obs,
                    OutageWindow(100.0, 200.0))
    assert v.passed and v.reasons == [], v.reasons
    assert v.failover_interval_s == [3.5, 11.1] and v.failover_s == 11.1
    assert v.judgement == {"failover": "undetermined: evidence late by up to 7.6 s"}
    assert "undetermined" in v.checks[0]["message"] and v.checks[0]["passed"]


def test_a_lapse_wholly_within_the_bound_is_within_bound():
    obs = [_reg(99, 1, "registered", 1), _reg(103.5, 2, "registered", 1),
           _reg(108.0, 1, "unregistered", 2, earliest=99.0)]
    v = judge_phone(_verdict(fail_max=10.0), 2, [FAIL], {"fall back": Reached({MAC: 108.2}, {})}, obs,
                    OutageWindow(100.0, 200.0))
    assert v.passed and v.judgement == {"failover": "within bound"}


def test_a_phone_whose_earliest_possible_move_is_over_the_bound_still_fails():
    """A phone that really fails over late: server 2 registered only 14 s in, so whatever server 1 did it
    cannot have been working on server 2 before that."""
    obs = [_reg(99, 1, "registered", 1), _reg(111.1, 1, "unregistered", None, earliest=99.0),
           _reg(114.0, 2, "registered", 2)]
    v = judge_phone(_verdict(fail_max=10.0), 2, [FAIL], {"fall back": Reached({MAC: 114.2}, {})}, obs,
                    OutageWindow(100.0, 200.0))
    assert not v.passed and v.judgement == {"failover": "over bound"}
    assert "14.0s" in v.reasons[0] and "10.0s" in v.reasons[0]


def test_a_loss_stamped_early_never_makes_the_move_earlier_than_the_registration():
    """A DNS lookup failure arrives after server 2's 200 but is stamped before it: the move is at the 200."""
    obs = [_reg(99, 1, "registered", 1), _reg(106.0, 2, "registered", 1),
           _reg(104.0, 1, "unregistered", 2, earliest=103.0)]
    v = judge_phone(_verdict(fail_max=10.0), 2, [FAIL], {"fall back": Reached({MAC: 106.5}, {})}, obs,
                    OutageWindow(100.0, 200.0))
    assert v.passed and v.failover_s == 6.0 and v.failover_interval_s is None
    assert v.judgement == {"failover": "within bound"}


def test_a_refresh_of_a_standing_registration_does_not_delay_the_move():
    """Server 2 registered long before the cut and refreshed at 106.3; server 1's timeout, stamped 106.0, arrives
    after that refresh: the move is at 106.0, not at the refresh."""
    obs = [_reg(90, 2, "registered", 1), _reg(99, 1, "registered", 1), _reg(106.3, 2, "registered", 1),
           _reg(106.0, 1, "unregistered", 2)]
    v = judge_phone(_verdict(fail_max=10.0), 2, [FAIL], {"fall back": Reached({MAC: 106.5}, {})}, obs,
                    OutageWindow(100.0, 200.0))
    assert v.passed and v.failover_s == 6.0 and v.failover_interval_s is None
