"""Unit tests for the rollout's decisions (fleet.rollout.policy): no Redis, no workers, no clock."""
from __future__ import annotations

import pytest

from fleet.rollout import policy as rp
from fleet.rollout.policy import Limits

NOW = 10_000.0
A1, A2, A3, B1, B2 = "0004f2a00001", "0004f2a00002", "0004f2a00003", "0004f2b00001", "0004f2b00002"
SITES = {A1: "a", A2: "a", A3: "a", B1: "b", B2: "b"}


def limits(**kw) -> Limits:
    base = dict(site_of=SITES, max_unavailable={"a": 1, "b": 1}, budget_total=0, budget_per_site=None,
                verify_within=120.0, registered_to=(1,), rollback=True, progress_deadline=600.0,
                dispatch_stall=60.0, defer_retry=5.0)
    base.update(kw)
    return Limits(**base)


def pending(**states) -> dict[str, dict]:
    """Every phone pending, except those given as MAC=record."""
    out = {m: {"state": "pending", "attempt": "1"} for m in SITES}
    out.update({k: v for k, v in states.items()})
    return out


def reg(t: float, *servers: int) -> dict[int, dict]:
    return {i: {"state": "registered", "t": t} for i in servers}


def kinds(actions) -> list[tuple[str, str]]:
    return [(a.kind, a.mac) for a in actions]


# ---------------------------------------------------------------- dispatch and max_unavailable
def test_a_fresh_wave_dispatches_one_phone_per_site_within_max_unavailable():
    s = rp.step(1, [A1, A2, B1], pending(), {}, limits(), NOW)
    assert s.verdict == rp.CONTINUE and s.actions == []
    assert kinds(s.dispatch) == [(rp.PUSH, A1), (rp.PUSH, B1)]
    assert s.dispatch[0].fields == {"state": "dispatched", "dispatched_at": NOW} and s.dispatch[0].task == "push"


def test_phones_in_flight_from_an_earlier_wave_hold_their_sites_slots():
    snap = pending(**{B2: {"state": "verifying", "reboot_at": str(NOW - 5)}})
    s = rp.step(1, [A1, B1], snap, {}, limits(), NOW)
    assert kinds(s.dispatch) == [(rp.PUSH, A1)]


def test_a_phone_failed_after_its_reboot_went_out_holds_its_slot_until_verify_within_has_passed():
    """A reboot whose answer timed out may have reached the phone: failed, it is still down as much as any other.
    A phone failed before anything was sent (its call check refused: no reboot_at) frees its slot at once."""
    budget = limits(budget_total=5, budget_per_site={"a": 5, "b": 5}, rollback=False)
    timed_out = pending(**{A1: {"state": "failed", "reboot_at": str(NOW - 5)},
                           B1: {"state": "rollback_failed", "rollback_at": str(NOW - 5)}})
    assert rp.dispatch({A2: {"state": "pending"}, B2: {"state": "pending"}}, timed_out, budget, NOW) == []
    long_ago = pending(**{A1: {"state": "failed", "reboot_at": str(NOW - 121)},
                          B1: {"state": "failed", "error": "call check refused"}})
    sent = rp.dispatch({A2: {"state": "pending"}, B2: {"state": "pending"}}, long_ago, budget, NOW)
    assert [a.mac for a in sent] == [A2, B2]


def test_a_phone_verified_this_pass_frees_its_slot_for_the_next_one():
    snap = pending(**{A1: {"state": "verifying", "reboot_at": str(NOW - 30), "attempt": "1"}})
    s = rp.step(0, [A1, A2], snap, {A1: reg(NOW - 1, 1)}, limits(), NOW)
    assert kinds(s.actions) == [(rp.VERIFIED, A1)]
    assert s.actions[0].fields["verified_in"] == 30.0 and s.actions[0].event == {"kind": "verified", "mac": A1, "seconds": 30.0}
    assert kinds(s.dispatch) == [(rp.PUSH, A2)]


def test_the_attempt_number_travels_with_the_push():
    s = rp.step(0, [A1], pending(**{A1: {"state": "pending", "attempt": "3"}}), {}, limits(), NOW)
    assert s.dispatch[0].attempt == 3


# ---------------------------------------------------------------- verification
def test_registration_older_than_the_reboot_does_not_verify():
    snap = pending(**{A1: {"state": "verifying", "reboot_at": str(NOW - 10)}})
    s = rp.step(0, [A1], snap, {A1: reg(NOW - 11, 1)}, limits(), NOW)
    assert s.actions == [] and s.verdict == rp.CONTINUE


def test_a_registration_asked_for_before_the_reboot_and_answered_after_it_does_not_verify():
    """A refresh the phone sent just before it took the reboot is answered after the reboot went out: the wire
    knows when it was sent (`sent`), and only a REGISTER sent after the reboot proves the phone came back. It
    verified a phone still on its way down, and a site had one more phone down than max_unavailable allows."""
    snap = pending(**{A1: {"state": "verifying", "reboot_at": str(NOW - 10)}})
    in_flight = {1: {"state": "registered", "t": NOW - 9.9, "sent": NOW - 10.05}}
    assert rp.step(0, [A1], snap, {A1: in_flight}, limits(), NOW).actions == []
    after = {1: {"state": "registered", "t": NOW - 1, "sent": NOW - 1.02}}
    assert kinds(rp.step(0, [A1], snap, {A1: after}, limits(), NOW).actions) == [(rp.VERIFIED, A1)]


def test_every_required_server_must_report_registered():
    snap = pending(**{A1: {"state": "verifying", "reboot_at": str(NOW - 10)}})
    assert rp.step(0, [A1], snap, {A1: reg(NOW, 1)}, limits(registered_to=(1, 2)), NOW).actions == []
    s = rp.step(0, [A1], snap, {A1: reg(NOW, 1, 2)}, limits(registered_to=(1, 2)), NOW)
    assert kinds(s.actions) == [(rp.VERIFIED, A1)] and s.verdict == rp.WAVE_DONE


def test_a_phone_not_looked_at_this_pass_is_not_verified_on_old_evidence():
    snap = pending(**{A1: {"state": "verifying", "reboot_at": str(NOW - 10)}})
    assert rp.step(0, [A1], snap, {}, limits(), NOW).actions == []
    assert rp.to_observe(snap, {A1, A2}) == [A1]


def test_a_phone_that_never_reports_is_rolled_back_after_verify_within():
    snap = pending(**{A1: {"state": "verifying", "reboot_at": str(NOW - 121), "attempt": "2"}})
    s = rp.step(0, [A1, A2], snap, {A1: {}}, limits(budget_total=1), NOW)
    (a,) = s.actions
    assert a.kind == rp.FAIL and a.task == "rollback" and a.fields["state"] == "rolling_back"
    assert a.fields["error"] == "not registered to server 1 within 120s of the reboot"
    assert a.event["kind"] == "failed"
    # a rolling-back phone is unavailable: its site's slot stays taken
    assert s.verdict == rp.CONTINUE and s.dispatch == []


def test_without_rollback_a_phone_that_never_reports_fails_and_settles():
    snap = pending(**{A1: {"state": "verifying", "reboot_at": str(NOW - 121)}})
    s = rp.step(0, [A1], snap, {}, limits(rollback=False, budget_total=1), NOW)
    assert [(a.kind, a.task, a.fields["state"]) for a in s.actions] == [(rp.FAIL, None, "failed")]
    assert s.verdict == rp.WAVE_DONE


def test_at_exactly_verify_within_the_phone_still_has_time():
    snap = pending(**{A1: {"state": "verifying", "reboot_at": str(NOW - 120)}})
    assert rp.step(0, [A1], snap, {}, limits(), NOW).actions == []


# ---------------------------------------------------------------- lost tasks and reboot claims
def test_a_dispatched_task_that_shows_nothing_for_the_stall_time_is_sent_again():
    snap = pending(**{A1: {"state": "dispatched", "dispatched_at": str(NOW - 61), "attempt": "1"}})
    (a,) = rp.step(0, [A1], snap, {}, limits(), NOW).actions
    assert (a.kind, a.task, a.fields) == (rp.RESEND, "push", {"dispatched_at": NOW})
    snap[A1]["dispatched_at"] = str(NOW - 59)
    assert rp.step(0, [A1], snap, {}, limits(), NOW).actions == []


def test_a_reboot_claimed_but_never_confirmed_sent_is_confirmed_once_per_stall_period():
    rebooting = {"state": "rebooting", "reboot_at": str(NOW - 61), "attempt": "2"}
    (a,) = rp.step(0, [A1], pending(**{A1: rebooting}), {}, limits(), NOW).actions
    assert (a.kind, a.task, a.attempt, a.fields) == (rp.CONFIRM_REBOOT, "push", 2, {"confirm_sent": NOW})
    # the confirmation was itself lost (a redelivered claim): sent again only once the stall time passed since it
    again = dict(rebooting, confirm_sent=str(NOW - 30))
    assert rp.step(0, [A1], pending(**{A1: again}), {}, limits(), NOW).actions == []
    again["confirm_sent"] = str(NOW - 61)
    assert kinds(rp.step(0, [A1], pending(**{A1: again}), {}, limits(), NOW).actions) == [(rp.CONFIRM_REBOOT, A1)]


def test_a_power_cycle_in_its_off_time_is_not_taken_for_a_lost_task():
    """The sender announced a power cycle and waits out the port's off time: a confirmation at the plain stall
    powered the port early, and the sender's late record rolled back a phone already verified."""
    wait = 30.0 + rp.POWER_CYCLE_MARGIN_S           # the off time, and the switch work around it
    cycling = {"state": "rebooting", "reboot_at": str(NOW - 61), "reboot_tried": "rest safeRestart,power-cycle",
               "power_cycle_at": str(NOW - wait + 1)}   # announced after its REST reboot got no answer
    assert rp.step(0, [A1], pending(**{A1: cycling}), {}, limits(power_off_s=30.0), NOW).actions == []
    cycling["power_cycle_at"] = str(NOW - wait - 0.1)
    assert kinds(rp.step(0, [A1], pending(**{A1: cycling}), {}, limits(power_off_s=30.0), NOW).actions) == [
        (rp.CONFIRM_REBOOT, A1)]
    cycling.update(power_cycle_at=str(NOW - 100), reboot_at=str(NOW - 59))      # never before the dispatch stall
    assert rp.step(0, [A1], pending(**{A1: cycling}), {}, limits(power_off_s=30.0), NOW).actions == []
    plain = {"state": "rebooting", "reboot_at": str(NOW - 61), "reboot_tried": "rest safeRestart"}
    assert kinds(rp.step(0, [A1], pending(**{A1: plain}), {}, limits(power_off_s=30.0), NOW).actions) == [
        (rp.CONFIRM_REBOOT, A1)]


def test_a_reboot_given_up_to_the_retry_policy_is_found_out_after_the_grace_not_the_stall():
    grace = rp.ABANDONED_REBOOT_GRACE_S
    given_up = {"state": "rebooting", "reboot_at": str(NOW - 30), "reboot_abandoned": str(NOW - grace + 1)}
    assert rp.step(0, [A1], pending(**{A1: given_up}), {}, limits(), NOW).actions == []
    given_up["reboot_abandoned"] = str(NOW - grace)
    assert kinds(rp.step(0, [A1], pending(**{A1: given_up}), {}, limits(), NOW).actions) == [(rp.CONFIRM_REBOOT, A1)]
    # given up on an earlier reboot (a resend recorded a new one since): not this one's
    given_up["reboot_abandoned"] = str(NOW - 31)
    assert rp.step(0, [A1], pending(**{A1: given_up}), {}, limits(), NOW).actions == []
    # given up near the stall's end (a long REST lock wait): the grace still counts, the stall does not cut it short
    late = {"state": "rebooting", "reboot_at": str(NOW - 61), "reboot_abandoned": str(NOW - 2)}
    assert rp.step(0, [A1], pending(**{A1: late}), {}, limits(), NOW).actions == []
    # a confirmation sent after it gave up: the next only a stall later
    late.update(reboot_abandoned=str(NOW - grace - 5), confirm_sent=str(NOW - 4))
    assert rp.step(0, [A1], pending(**{A1: late}), {}, limits(), NOW).actions == []


def test_a_rebooting_phone_is_never_verified_by_a_registration():
    snap = pending(**{A1: {"state": "rebooting", "reboot_at": str(NOW - 10)}})
    assert rp.step(0, [A1], snap, {A1: reg(NOW, 1)}, limits(), NOW).actions == []


def test_a_reboot_claim_never_confirmed_fails_after_verify_within_when_the_stall_is_longer():
    snap = pending(**{A1: {"state": "rebooting", "reboot_at": str(NOW - 50), "confirm_sent": str(NOW - 1)}})
    (a,) = rp.step(0, [A1], snap, {}, limits(verify_within=40, budget_total=1), NOW).actions
    assert a.kind == rp.FAIL and a.task == "rollback"


# ---------------------------------------------------------------- rollback
def test_rolled_back_once_server_1_registers_after_the_rollback():
    snap = pending(**{A1: {"state": "rolling_back", "rollback_at": str(NOW - 20), "rollback_verify_from": str(NOW - 19.5),
                           "error": "x"}})
    assert rp.step(0, [A1], snap, {A1: reg(NOW - 21, 1)}, limits(budget_total=1), NOW).actions == []
    s = rp.step(0, [A1], snap, {A1: reg(NOW - 1, 1)}, limits(budget_total=1, registered_to=(2,)), NOW)
    assert kinds(s.actions) == [(rp.ROLLED_BACK, A1)] and s.verdict == rp.WAVE_DONE


def test_a_registration_between_the_reboot_recorded_and_its_answer_does_not_verify():
    """reboot_at is stamped before the reboot is sent; until the phone answers it (verify_from) it may still be up:
    its REST lock held by a poller, a digest challenge, a slow worker. A refresh (or a lineInfo answer) in that
    time verified a phone on its way down, and a site had one phone more down than max_unavailable allows."""
    snap = pending(**{A1: {"state": "verifying", "reboot_at": str(NOW - 10), "verify_from": str(NOW - 9)}})
    before_answer = {1: {"state": "registered", "t": NOW - 9.5, "sent": NOW - 9.5}}
    assert rp.step(0, [A1], snap, {A1: before_answer}, limits(), NOW).actions == []
    stamped_late = {1: {"state": "registered", "t": NOW - 8, "sent": NOW - 9.2}}   # a lineInfo asked before the answer
    assert rp.step(0, [A1], snap, {A1: stamped_late}, limits(), NOW).actions == []
    after = {1: {"state": "registered", "t": NOW - 1, "sent": NOW - 1.02}}
    (verified,) = rp.step(0, [A1], snap, {A1: after}, limits(), NOW).actions
    assert verified.kind == rp.VERIFIED and verified.fields["verified_in"] == 10.0   # still timed from the reboot


def test_a_report_stamped_on_receipt_counts_only_a_skew_after_the_answer():
    """Two suites side by side: a refresh the phone reported by syslog just before it took the reboot reached the
    collector 0.02 s after the worker read the answer; it verified a phone on its way down (six down where five may
    be). A report that says only when it arrived counts from RECEIVED_SKEW_S after the answer; one that says when
    the phone sent it (wire, HEP, a poll) from the answer itself."""
    skew = rp.RECEIVED_SKEW_S
    snap = pending(**{A1: {"state": "verifying", "reboot_at": str(NOW - 10), "verify_from": str(NOW - 9)}})
    arrived_just_after = {1: {"state": "registered", "t": NOW - 9 + 0.02, "source": "syslog"}}
    assert rp.step(0, [A1], snap, {A1: arrived_just_after}, limits(), NOW).actions == []
    arrived_later = {1: {"state": "registered", "t": NOW - 9 + skew + 0.01, "source": "syslog"}}
    assert kinds(rp.step(0, [A1], snap, {A1: arrived_later}, limits(), NOW).actions) == [(rp.VERIFIED, A1)]
    sent_after = {1: {"state": "registered", "t": NOW - 9 + 0.02, "sent": NOW - 9 + 0.01, "source": "wire"}}
    assert kinds(rp.step(0, [A1], snap, {A1: sent_after}, limits(), NOW).actions) == [(rp.VERIFIED, A1)]
    # a phone quick to boot (the lab's): its report came after its shutdown event for this reboot
    quick = {1: {"state": "registered", "t": NOW - 9 + 0.05, "source": "syslog"}}
    assert kinds(rp.step(0, [A1], snap, {A1: quick}, limits(), NOW, downs={A1: NOW - 9 + 0.01}).actions) == [
        (rp.VERIFIED, A1)]
    # ... not before it, nor after a shutdown event older than this reboot
    assert rp.step(0, [A1], snap, {A1: arrived_just_after}, limits(), NOW, downs={A1: NOW - 9 + 0.03}).actions == []
    assert rp.step(0, [A1], snap, {A1: quick}, limits(), NOW, downs={A1: NOW - 9 - skew - 0.01}).actions == []


def test_a_rollback_is_verified_only_after_its_reboot_was_answered_or_the_stall_passed():
    """The rollback records rollback_at before its reboot and rollback_verify_from once the phone answered it;
    without the second (the reboot in flight, or its task died sending it) nothing verifies until the dispatch
    stall has passed since rollback_at."""
    fresh = {1: {"state": "registered", "t": NOW - 1}}
    in_flight = pending(**{A1: {"state": "rolling_back", "rollback_at": str(NOW - 5), "error": "x"}})
    assert rp.step(0, [A1], in_flight, {A1: fresh}, limits(budget_total=1), NOW).actions == []
    answered = pending(**{A1: {"state": "rolling_back", "rollback_at": str(NOW - 5), "rollback_verify_from": str(NOW - 2),
                               "error": "x"}})
    assert kinds(rp.step(0, [A1], answered, {A1: fresh}, limits(budget_total=1), NOW).actions) == [(rp.ROLLED_BACK, A1)]
    died = pending(**{A1: {"state": "rolling_back", "rollback_at": str(NOW - 61), "error": "x"}})
    assert kinds(rp.step(0, [A1], died, {A1: fresh}, limits(budget_total=1), NOW).actions) == [(rp.ROLLED_BACK, A1)]


def test_a_rollback_that_does_not_re_register_fails_with_both_reasons():
    snap = pending(**{A1: {"state": "rolling_back", "rollback_at": str(NOW - 121), "error": "not registered"}})
    (a,) = rp.step(0, [A1], snap, {}, limits(budget_total=1), NOW).actions
    assert a.kind == rp.ROLLBACK_FAILED and a.fields["state"] == "rollback_failed"
    assert a.fields["error"] == "not registered; the rolled-back phone did not re-register"


def test_a_rollback_not_yet_started_by_its_task_waits():
    snap = pending(**{A1: {"state": "rolling_back", "rollback_requested": str(NOW - 500)}})
    assert rp.step(0, [A1], snap, {}, limits(budget_total=1), NOW).actions == []


# ---------------------------------------------------------------- failure budgets
def test_budget_exactly_spent_goes_on_and_one_more_failure_halts():
    snap = pending(**{A1: {"state": "failed"}, B1: {"state": "rolled_back"}})
    s = rp.step(1, [A2, B2], snap, {}, limits(budget_total=2), NOW)
    assert s.verdict == rp.CONTINUE and kinds(s.dispatch) == [(rp.PUSH, A2), (rp.PUSH, B2)]
    snap[A3] = {"state": "rollback_failed"}
    s = rp.step(1, [A2, B2], snap, {}, limits(budget_total=2), NOW)
    assert s.verdict == rp.HALT and s.dispatch == []
    assert s.reason == "failure budget spent: 3 phones failed (budget 2)"


def test_a_phone_being_rolled_back_counts_against_the_budget_as_soon_as_it_fails():
    snap = pending(**{A1: {"state": "verifying", "reboot_at": str(NOW - 200)}})
    s = rp.step(0, [A1], snap, {}, limits(budget_total=0), NOW)
    assert kinds(s.actions) == [(rp.FAIL, A1)]   # the rollback is still sent before the halt
    assert s.verdict == rp.HALT and s.reason == "failure budget spent: 1 phone failed (budget 0)"


def test_per_site_budget_halts_on_one_site_while_the_total_has_room():
    snap = pending(**{B1: {"state": "failed"}, B2: {"state": "failed"}})
    lim = limits(budget_total=5, budget_per_site={"a": 1, "b": 1})
    s = rp.step(1, [A1, A2], snap, {}, lim, NOW)
    assert s.verdict == rp.HALT and s.reason == "failure budget of site b spent: 2 phones failed (budget 1)"
    snap[B2] = {"state": "verified"}
    assert rp.step(1, [A1, A2], snap, {}, lim, NOW).verdict == rp.CONTINUE


def test_failures_of_earlier_waves_count():
    snap = pending(**{B1: {"state": "failed"}})
    assert rp.budget_spent(snap, limits(budget_total=0)).startswith("failure budget spent: 1")
    assert rp.budget_spent(snap, limits(budget_total=1)) == ""


def test_canary_failure_with_no_budget_halts_before_any_other_phone_is_sent():
    snap = pending(**{A1: {"state": "verifying", "reboot_at": str(NOW - 121)}})
    s = rp.step(0, [A1], snap, {A1: {}}, limits(budget_total=0), NOW)
    assert s.verdict == rp.HALT and s.dispatch == []
    # the canary itself failing in its task (a publish error) halts the same way
    s = rp.step(0, [A1], pending(**{A1: {"state": "failed", "error": "publish refused"}}), {}, limits(), NOW)
    assert s.verdict == rp.HALT


def test_canary_failure_within_the_budget_ends_the_wave_and_the_next_goes_on():
    s = rp.step(0, [A1], pending(**{A1: {"state": "rolled_back"}}), {}, limits(budget_total=1), NOW)
    assert s.verdict == rp.WAVE_DONE


# ---------------------------------------------------------------- deferred phones and deadlines
def test_a_deferred_phone_is_sent_again_only_after_the_retry_time():
    deferred = {"state": "deferred", "deferred_at": str(NOW - 3)}
    s = rp.step(0, [A1], pending(**{A1: deferred}), {}, limits(), NOW)
    assert s.dispatch == [] and s.verdict == rp.CONTINUE
    deferred["deferred_at"] = str(NOW - 6)
    assert kinds(rp.step(0, [A1], pending(**{A1: deferred}), {}, limits(), NOW).dispatch) == [(rp.PUSH, A1)]


def test_a_deferred_phone_at_the_deadline_halts_the_wave_naming_it():
    snap = pending(**{A1: {"state": "verified"},
                      A2: {"state": "deferred", "deferred_at": str(NOW - 1),
                           "deferred_reason": "in-call: REST callStatus v2: 1 call(s) (Connected)"},
                      B1: {"state": "dispatched", "dispatched_at": str(NOW - 1)}})
    s = rp.step(2, [A1, A2, B1], snap, {}, limits(), NOW, deadline_passed=True)
    assert s.verdict == rp.HALT and s.dispatch == []
    assert s.reason == (f"wave 2 missed its progress deadline (600s); waiting on "
                        f"1 deferred in a call ({A2}), 1 dispatched")


def test_a_halted_wave_says_which_phone_is_in_a_call_and_which_state_is_unknown_and_why():
    """Failed before: both were "deferred as possibly in a call"."""
    snap = pending(**{A1: {"state": "deferred", "deferred_at": str(NOW - 1),
                           "deferred_reason": "in-call: REST callStatus v2: 1 call(s) (Connected)"},
                      A2: {"state": "deferred", "deferred_at": str(NOW - 1),
                           "deferred_reason": "unknown: REST callStatus v2: no answer within 5s"}})
    s = rp.step(0, [A1, A2], snap, {}, limits(), NOW, deadline_passed=True)
    assert s.verdict == rp.HALT
    assert f"1 deferred in a call ({A1})" in s.reason
    assert f"1 deferred ({A2}: state unknown: REST callStatus v2: no answer within 5s)" in s.reason
    assert rp.why_deferred("unknown: x") == "state unknown: x" and rp.why_deferred(None).startswith("possibly")


def test_a_settled_wave_is_done_even_when_its_deadline_passed():
    snap = pending(**{A1: {"state": "verified"}, A2: {"state": "skipped"}})
    assert rp.step(0, [A1, A2], snap, {}, limits(), NOW, deadline_passed=True).verdict == rp.WAVE_DONE


def test_the_last_verification_before_the_deadline_still_counts():
    snap = pending(**{A1: {"state": "verifying", "reboot_at": str(NOW - 10)}})
    s = rp.step(0, [A1], snap, {A1: reg(NOW, 1)}, limits(), NOW, deadline_passed=True)
    assert s.verdict == rp.WAVE_DONE and kinds(s.actions) == [(rp.VERIFIED, A1)]


def test_budget_spent_wins_over_the_deadline():
    snap = pending(**{A1: {"state": "failed"}, A2: {"state": "deferred", "deferred_at": str(NOW)}})
    s = rp.step(0, [A1, A2], snap, {}, limits(), NOW, deadline_passed=True)
    assert s.verdict == rp.HALT and s.reason.startswith("failure budget spent")


# ---------------------------------------------------------------- abort and settling
def test_abort_stops_before_any_decision():
    snap = pending(**{A1: {"state": "verifying", "reboot_at": str(NOW - 500)}})
    s = rp.step(0, [A1, A2], snap, {}, limits(), NOW, abort=True)
    assert (s.verdict, s.reason, s.actions, s.dispatch) == (rp.ABORT, "aborted by request", [], [])


def test_settling_sends_nothing_new_and_finishes_phones_already_rebooting():
    states = {A1: {"state": "verifying", "reboot_at": str(NOW - 10)}, A2: {"state": "pending"},
              A3: {"state": "deferred", "deferred_at": str(NOW - 100)}}
    actions, done = rp.settle([A1, A2, A3], states, {}, limits(), NOW)
    assert actions == [] and not done
    actions, done = rp.settle([A1, A2, A3], states, {A1: reg(NOW, 1)}, limits(), NOW)
    assert kinds(actions) == [(rp.VERIFIED, A1)] and done


def test_settling_waits_for_a_rollback_it_started():
    states = {A1: {"state": "verifying", "reboot_at": str(NOW - 200)}}
    actions, done = rp.settle([A1], states, {}, limits(), NOW)
    assert kinds(actions) == [(rp.FAIL, A1)] and not done
    assert limits().settle_within == 270


def test_the_step_does_not_change_what_it_was_given():
    snap = pending(**{A1: {"state": "verifying", "reboot_at": str(NOW - 10)}})
    before = {m: dict(st) for m, st in snap.items()}
    rp.step(0, [A1, A2], snap, {A1: reg(NOW, 1)}, limits(), NOW)
    assert snap == before


# ---------------------------------------------------------------- plumbing
def test_limits_from_a_stored_plan_and_playbook():
    from fleet.rollout.playbook import RolloutPlaybook

    pb = RolloutPlaybook.model_validate({"kind": "rollout", "name": "t", "params": {"reg.1.label": "x"},
                                         "verify": {"registered_to": [1, 2], "within": 90}, "rollback": False,
                                         "strategy": {"progress_deadline": 300}})
    plan = {"phones": [{"mac": A1, "site": "a"}, {"mac": B1, "site": "b"}], "max_unavailable": {"a": 1, "b": 2},
            "budget_total": 1, "budget_per_site": None}
    lim = Limits.of(plan, pb, budget_total=4, dispatch_stall=8)
    assert (lim.site_of, lim.budget_total, lim.budget_per_site, lim.registered_to, lim.verify_within, lim.rollback,
            lim.progress_deadline, lim.dispatch_stall) == ({A1: "a", B1: "b"}, 4, None, (1, 2), 90.0, False, 300.0, 8)
    assert Limits.of(dict(plan, budget_per_site={"a": 0}), pb).budget_per_site == {"a": 0}
    assert lim.power_off_s == 0.0      # no power cycle fallback: no off time to wait out
    cycled = pb.model_copy(update={"strategy": pb.strategy.model_copy(update={"power_cycle_fallback": True,
                                                                               "power_off_s": 45.0})})
    assert Limits.of(plan, cycled).power_off_s == 45.0


def test_the_drill_gate_runs_after_a_canary_wave_only():
    assert rp.drill_due(0, 1, "drill.yml")
    assert not rp.drill_due(1, 1, "drill.yml") and not rp.drill_due(0, 0, "drill.yml") and not rp.drill_due(0, 1, None)


def test_settled_states_agree_with_the_store():
    from fleet.state.store import RolloutStore

    assert set(rp.SETTLED) == set(RolloutStore.SETTLED)
    assert set(rp.FAILED) < set(rp.SETTLED) and not set(rp.IN_FLIGHT) & set(rp.SETTLED)


@pytest.mark.parametrize("state", ["pending", "deferred"])
def test_a_site_at_its_limit_sends_nothing(state):
    snap = pending(**{A1: {"state": "publishing", "dispatched_at": str(NOW)}, A2: {"state": state, "deferred_at": "0"}})
    assert rp.step(0, [A2], snap, {}, limits(), NOW).dispatch == []


def test_an_on_failure_fallback_silent_since_the_reboot_verifies_a_failed_one_does_not():
    """UC Software with reRegisterOn=1 on server 2 (PhonePlan.on_failure_fallbacks): a phone that registers with
    server 2 only once server 1 fails sends it nothing while server 1 works. verify: registered_to [1, 2] passes
    it on server 1 alone, saying so; a phone that tried server 2 since the reboot and failed there is not passed,
    and a phone without the switch (SIP 3.x, reRegisterOn=0) still needs server 2."""
    snap = pending(**{A1: {"state": "verifying", "reboot_at": str(NOW - 10)}})
    held = limits(registered_to=(1, 2), on_failure_fallbacks={A1: (2,)})
    s = rp.step(0, [A1], snap, {A1: reg(NOW, 1)}, held, NOW)
    assert kinds(s.actions) == [(rp.VERIFIED, A1)]
    assert "reRegisterOn=1" in s.actions[0].fields["verified_note"] and "server 2 not registered" in s.actions[0].event["note"]
    failed = {A1: reg(NOW, 1) | {2: {"state": "unregistered", "t": NOW - 2}}}
    assert rp.step(0, [A1], snap, failed, held, NOW).actions == []
    # server 1 not (yet) registered: nothing to verify on
    assert rp.step(0, [A1], snap, {A1: {}}, held, NOW).actions == []
    assert rp.step(0, [A1], snap, {A1: reg(NOW, 1)}, limits(registered_to=(1, 2)), NOW).actions == []


def test_a_silent_fallback_the_push_moved_is_not_taken_as_a_standby_and_the_failure_says_fallback_unverified():
    """Review of issue 16: a phone whose new server 2 address is wrong sends REGISTERs that time out at an
    address the wire evidence does not attribute, so nothing of server 2 is seen since the push; its last
    "registered" there is from before the push, at the old address. That silence proves nothing: the phone is
    not verified, and at the deadline it fails with "fallback unverified" and what would prove it. Server 2
    left where it was keeps the silent standby (test above)."""
    snap = pending(**{A1: {"state": "verifying", "reboot_at": str(NOW - 10)}})
    moved = limits(registered_to=(1, 2), on_failure_fallbacks={A1: (2,)}, moved_fallbacks={A1: (2,)})
    before_push = {A1: reg(NOW, 1) | {2: {"state": "registered", "t": NOW - 500}}}
    assert rp.step(0, [A1], snap, before_push, moved, NOW).actions == []
    assert rp.step(0, [A1], snap, {A1: reg(NOW, 1)}, moved, NOW).actions == []
    # registered at the new address since the push: proven, verified without a note
    s = rp.step(0, [A1], snap, {A1: reg(NOW, 1, 2)}, moved, NOW)
    assert kinds(s.actions) == [(rp.VERIFIED, A1)] and "verified_note" not in s.actions[0].fields
    late = pending(**{A1: {"state": "verifying", "reboot_at": str(NOW - 121)}})
    (a,) = rp.step(0, [A1], late, before_push, moved, NOW).actions
    assert a.kind == rp.FAIL and a.fields["state"] == "rolling_back"
    assert a.fields["error"].startswith("not registered to servers 1 and 2 within 120s of the reboot; fallback "
                                        "unverified: server 2 got a new address or port in this push")
    assert "WAN-outage experiment" in a.event["reason"]


def test_the_plan_says_which_on_failure_fallbacks_the_push_moves():
    from fleet.phoneconf import predict

    old = {"reg.1.server.1.address": "a.example", "reg.1.server.2.address": "b.example",
           "reg.1.server.2.failOver.reRegisterOn": "1"}
    assert predict.fallbacks_on_failure(old, 1, "uc-5.x") == [2]
    assert predict.moved_fallbacks(old, dict(old), 1, "uc-5.x") == []
    assert predict.moved_fallbacks(old, {**old, "reg.1.server.1.expires": "120"}, 1, "uc-5.x") == []
    assert predict.moved_fallbacks(old, {**old, "reg.1.server.2.address": "c.example"}, 1, "uc-5.x") == [2]
    assert predict.moved_fallbacks(old, {**old, "reg.1.server.2.port": "5070"}, 1, "uc-5.x") == [2]
    fresh = {k: v for k, v in old.items() if ".server.2." not in k}
    assert predict.moved_fallbacks(fresh, old, 1, "uc-5.x") == [2]      # a fallback the push adds is new too
    lim = Limits.of({"phones": [{"mac": A1, "site": "a", "on_failure_fallbacks": [2], "moved_fallbacks": [2]}],
                     "max_unavailable": {"a": 1}, "budget_total": 0},
                    type("PB", (), {"verify": type("V", (), {"within": 60, "registered_to": [1, 2]}),
                                    "rollback": True, "strategy": type("S", (), {"progress_deadline": 600, "power_cycle_fallback": False})})())
    assert lim.moved_fallbacks == {A1: (2,)}


# ---------------------------------------------------------------- a pass over a big wave (issue 22)
def test_a_pass_never_changes_the_records_it_was_given():
    """The policy copies a record only when it decides something about it: the caller's snapshot stays as read."""
    snap = pending(**{A1: {"state": "verifying", "reboot_at": str(NOW - 30), "attempt": "1"}})
    before = {m: dict(st) for m, st in snap.items()}
    s = rp.step(0, [A1, A2, A3], snap, {A1: reg(NOW - 1, 1)}, limits(), NOW)
    assert kinds(s.actions) == [(rp.VERIFIED, A1)] and kinds(s.dispatch) == [(rp.PUSH, A2)]
    assert snap == before


def test_dispatch_stops_once_every_site_is_at_its_limit_and_not_before():
    """Site a full, site b with room: b's phone late in the wave is still sent; with both full, nothing is."""
    snap = pending(**{A1: {"state": "verifying", "reboot_at": str(NOW - 5)}})
    s = rp.step(0, [A2, A3, B1], snap, {}, limits(), NOW)
    assert kinds(s.dispatch) == [(rp.PUSH, B1)]
    snap[B2] = {"state": "publishing", "dispatched_at": str(NOW - 1)}
    s = rp.step(0, [A2, A3, B1], snap, {}, limits(), NOW)
    assert s.dispatch == [] and s.verdict == rp.CONTINUE


def test_an_unsettled_phone_anywhere_in_the_wave_keeps_it_open():
    settled = {m: {"state": "verified"} for m in SITES}
    assert rp.wave_settled(list(SITES), settled)
    for m in SITES:
        assert not rp.wave_settled(list(SITES), {**settled, m: {"state": "verifying"}}), m
