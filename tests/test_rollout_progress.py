"""The words a rollout prints (fleet.rollout.progress, fleet.base.words): per-phone lines and summaries, no reprs."""
from __future__ import annotations

from fleet.base.words import servers
from soundpoint.values import plural
from fleet.rollout.progress import PhoneLines, counts_of, summary

PLAN = {"phones": [{"mac": "0004f2000001", "site": "east"}, {"mac": "0004f2000002", "site": "east"},
                   {"mac": "0004f2000003", "site": "west"}],
        "waves": [["0004f2000001"], ["0004f2000002", "0004f2000003"]]}


def test_counts_agree_with_their_numbers():
    assert plural(1, "site") == "1 site" and plural(2, "site") == "2 sites" and plural(0, "phone") == "0 phones"
    assert servers([1]) == "server 1" and servers([1, 2]) == "servers 1 and 2" and servers([1, 2, 3]) == "servers 1, 2 and 3"
    assert summary({"total": 6, "verified": 5, "failed": 1}) == "6 phones: 5 verified, 1 failed"
    assert summary({"total": 1, "rolled_back": 1}) == "1 phone: 1 rolled back"
    assert summary(counts_of({"a": {"state": "pending"}, "b": {"state": "verified"}})) == "2 phones: 1 verified, 1 pending"


def test_a_line_per_phone_as_it_settles_and_each_reason_once():
    lines = PhoneLines(PLAN, [1])
    assert lines.states({"0004f2000001": {"state": "pending"}}) == []
    assert lines.states({"0004f2000001": {"state": "verifying"}}) == []       # only with verbose
    assert lines.states({"0004f2000001": {"state": "verified", "verified_in": "23.43"}}) == [
        "ok: [0004f2000001] east wave 0 verified on server 1 in 23.4 s"]
    deferred = {"state": "deferred", "deferred_reason": "in-call: REST callStatus v2: 1 call (Connected)"}
    assert lines.states({"0004f2000002": deferred}) == [
        "deferred: [0004f2000002] east wave 1: in a call (REST callStatus v2: 1 call (Connected)); tried again shortly"]
    assert lines.states({"0004f2000002": deferred}) == []                       # said once, until it changes
    assert lines.states({"0004f2000003": {"state": "failed", "error": "call check refused: wrong credentials"}}) == [
        "failed: [0004f2000003] west wave 1: call check refused: wrong credentials"]


def test_verbose_says_every_state_and_step():
    lines = PhoneLines(PLAN, [1, 2], verbose=True)
    assert lines.states({"0004f2000001": {"state": "verifying"}}) == [
        "  [0004f2000001] east wave 0 verifying: waiting for it to register with servers 1 and 2"]
    steps = [{"kind": "step", "phase": "start", "step": "reboot", "mac": "0004f2000001"},
             {"kind": "step", "phase": "end", "step": "reboot", "mac": "0004f2000001", "outcome": "ok", "duration_s": 0.25}]
    assert lines.steps(steps) == ["  [0004f2000001] east wave 0 step reboot: ok in 0.2 s"]
