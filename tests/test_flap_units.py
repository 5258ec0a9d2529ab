"""A flapping WAN without a lab: its plan, its playbook errors, its recovery bound per failback mode, the per-phone
counts from evidence, and the lab's ground-truth counts of the same window (fleet.experiment.flap_*, predict,
hil.groundtruth)."""
from __future__ import annotations

import pytest

from fleet.experiment import flap_counts as fc
from fleet.experiment import flap_plan, flap_report, playbook
from fleet.experiment.flap_counts import FlapWindow
from fleet.phoneconf import predict
from hil.groundtruth import GroundTruth, window_counts
from soundpoint.yamlfile import FileError

from test_predict_modes import UC, two_servers

S = predict.DETECTION_SLACK


# ------------------------------------------------------------------------------------------------ the plan

def test_plan_without_jitter_is_the_numbers_given():
    plan = flap_plan.plan("drop", 5, 10, 10, margin_s=10)
    assert [(c.start, c.down_s, c.up_s, c.end) for c in plan.cycles] == [
        (0.0, 10, 10, 10.0), (20.0, 10, 10, 30.0), (40.0, 10, 10, 50.0), (60.0, 10, 10, 70.0), (80.0, 10, 10, 90.0)]
    assert plan.duration_s == 100.0
    # every cut's dead-man fires `margin` after its own planned end: the last by the sequence's end plus margin
    assert all(c.max_duration == 20 for c in plan.cycles)
    assert plan.deadman_deadline_s == 80 + 20 <= plan.cycles[-1].end + plan.margin_s


def test_jittered_plan_is_the_same_for_a_seed_and_stays_within_the_jitter():
    a = flap_plan.plan("link-down", 20, 4, 6, jitter_s=2, seed=7, margin_s=3)
    b = flap_plan.plan("link-down", 20, 4, 6, jitter_s=2, seed=7, margin_s=3)
    c = flap_plan.plan("link-down", 20, 4, 6, jitter_s=2, seed=8, margin_s=3)
    assert a == b and a.to_dict() == b.to_dict()
    assert a != c
    for cut in a.cycles:
        assert 2 <= cut.down_s <= 6 and 4 <= cut.up_s <= 8
        assert cut.max_duration >= cut.down_s + 3 and cut.max_duration < cut.down_s + 4
    assert len({cut.down_s for cut in a.cycles}) > 10      # really jittered
    starts = [cut.start for cut in a.cycles]
    assert starts == sorted(starts) and all(
        abs(later.start - (cut.start + cut.down_s + cut.up_s)) < 0.002 for cut, later in zip(a.cycles, a.cycles[1:]))


def test_plan_refuses_a_jitter_that_could_reach_zero():
    with pytest.raises(ValueError, match="jitter_s 4 must be below"):
        flap_plan.plan("drop", 2, 4, 10, jitter_s=4, seed=1)


def _playbook(tmp_path, flap: str):
    path = tmp_path / "pb.yml"
    path.write_text(f"kind: experiment\nname: f\nsite: hq\nsteps:\n  - name: flap it\n    flap: {flap}\n")
    return path


def test_playbook_flap_step_loads_and_plans(tmp_path):
    pb = playbook.load(_playbook(tmp_path, "{mode: drop, cycles: 5, down_s: 10, up_s: 10, jitter_s: 2, seed: 7}"))
    step = pb.steps[0]
    assert isinstance(step, playbook.FlapStep)
    assert step.flap.plan() == flap_plan.plan("drop", 5, 10, 10, 2, 7, 10.0)


@pytest.mark.parametrize("flap, where, said", [
    ("{mode: drop, cycles: 5, down_s: 3, up_s: 10, jitter_s: 3, seed: 1}", "jitter_s", "must be below both"),
    ("{mode: drop, cycles: 5, down_s: 10, up_s: 10, jitter_s: 2}", "seed", "needs a seed"),
    ("{mode: drop, cycles: 0, down_s: 10, up_s: 10}", "cycles", "greater than or equal to 1"),
    ("{mode: drop, cycles: 2, down_s: 0, up_s: 10}", "down_s", "greater than 0"),
    ("{mode: sideways, cycles: 2, down_s: 1, up_s: 1}", "mode", "link-down"),
    ("{mode: drop, cycles: 2, down_s: 1, up_s: 1, loss: 0.5}", "loss", "degrade outage only"),
    ("{mode: degrade, cycles: 2, down_s: 1, up_s: 1}", "mode", "needs loss"),
    ("{mode: drop, cycles: 2, down_s: 1, up_s: 1, every: 3}", "flap.every", "unknown field"),
])
def test_playbook_flap_errors_name_the_line_and_field(tmp_path, flap, where, said):
    with pytest.raises(FileError) as exc:
        playbook.load(_playbook(tmp_path, flap))
    text = str(exc.value)
    assert "pb.yml:6" in text and where in text and said in text, text


def test_a_flap_inside_an_open_outage_is_refused(tmp_path):
    path = tmp_path / "pb.yml"
    path.write_text("kind: experiment\nname: f\nsite: hq\nsteps:\n  - {name: cut, outage: drop, max_duration: 60}\n"
                    "  - {name: flap, flap: {mode: drop, cycles: 2, down_s: 1, up_s: 1}}\n  - {name: back, restore: true}\n")
    with pytest.raises(FileError, match="a flap while an outage is open"):
        playbook.load(path)


# ------------------------------------------------------------------------------------------------ the bound

def test_flap_bound_is_the_single_outage_bound_over_the_whole_flap_plus_the_register_in_flight():
    params = two_servers()
    tx = 2.0
    single_last_cut = predict.recovery_bound(params, family=UC, outage_s=10).seconds
    flap = predict.flap_recovery_bound(params, family=UC, flap_s=90)
    # newRequests: the backoff grows over 90 s of failures (10, 20, 40, then max 60), not over the last 10 s
    assert flap.seconds == tx + 60 + tx + S
    assert flap.seconds > single_last_cut
    assert flap.derivation.paths[0][0].name == "REGISTER in flight at the restore"
    # unknown flap length: the maximum wait
    assert predict.flap_recovery_bound(params, family=UC).seconds == tx + 60 + tx + S


@pytest.mark.parametrize("mode, extra, expected", [
    ("newRequests", {}, 2.0 + 60 + 2.0 + S),
    ("duration", {"failOver__failBack__timeout": "120"}, 2.0 + 120 + S),
    ("registration", {}, 2.0 + max(60 + 2.0 + S, 240 + 2.0 + S)),     # fallback expires 300 - overlap 60
])
def test_flap_bound_per_failback_mode(mode, extra, expected):
    params = two_servers(failOver__failBack__mode=mode, **extra)
    assert predict.flap_recovery_bound(params, family=UC, flap_s=200).seconds == pytest.approx(expected)


def test_flap_bound_missing_where_the_single_one_is():
    never = two_servers(failOver__failBack__mode="duration", failOver__failBack__timeout="0")
    b = predict.flap_recovery_bound(never, family=UC, flap_s=30)
    assert b.seconds is None and "never fails back" in b.reason
    ttl = two_servers(failOver__failBack__mode="DNSTTL")
    assert predict.flap_recovery_bound(ttl, family=UC, flap_s=30).seconds is None
    assert predict.flap_recovery_bound(ttl, family=UC, flap_s=30, dns_ttl=30).seconds == pytest.approx(
        2.0 + 60 + 2.0 + S + 30)    # 30 s of failures: waits of 20 and 40 nominal (at least 10 + 20 s), then 60


def test_sip3_fixed_retry_flap_bound():
    params = two_servers()
    b = predict.flap_recovery_bound(params, family="sip-3.x", flap_s=500)
    assert b.seconds == 2.0 + 60 + 2.0 + S


# ------------------------------------------------------------------------------------------------ counts from evidence

W = FlapWindow(start=100.0, end=150.0, last_restore=140.0)


def obs(t, source, server, state, ws, **kw):
    return {"t": t, "source": source, "server": server, "state": state, "working_server": ws, "reg": 1,
            "kind": "registration", **kw}


def flap_history():
    """A phone on 1 and 2, two losses of server 1 in the window (one before it does not count), back at 143."""
    return [
        obs(95, "wire", 1, "unregistered", 2, detail="no answer within 1.6s retransmissions=3"),   # before the window
        obs(98, "wire", 1, "registered", 1, code=200, expires=10),
        obs(101.6, "wire", 1, "unregistered", 2, detail="no answer within 1.6s retransmissions=3"),   # sent at 100.0
        obs(102, "wire", 2, "registered", 2, code=200, expires=10),
        obs(102.0, "syslog", 1, "unregistered", 2),
        obs(112, "wire", 1, "registered", 1, code=200),
        obs(121.6, "wire", 1, "unregistered", None, detail="no answer within 1.6s"),
        obs(121.7, "wire", 2, "unregistered", None, code=503),
        obs(123, "wire", 2, "registered", 2, code=200),
        obs(143, "wire", 1, "registered", 1, code=200),
        obs(151.0, "wire", 1, "registered", 1, code=200),   # after the window
    ]


def test_losses_counted_from_one_source_in_the_window():
    lost, source = fc.registrations_lost(flap_history(), {"1": {"state": "registered"}}, [1, 2], W)
    assert (lost, source) == ({"1": 2, "2": 1}, "wire")
    assert fc.registrations_lost([obs(101, "event", None, "registered", 1)], {}, [1, 2], W) == ("unknown", None)


def test_registered_nowhere_is_the_sum_of_gaps():
    assert fc.registered_nowhere_s(flap_history(), 1, W) == pytest.approx(123 - 121.6)
    # no working server at all through the window
    assert fc.registered_nowhere_s([], None, W) == 50.0


def test_registers_counted_at_their_sending_time_and_unknown_without_a_wire_source():
    sent, source = fc.registers_sent(flap_history(), [1, 2], W, ["router capture"])
    # server 1: sent at 100.0 (answered at 101.6), 112, 120.0, 143; not 98 or 151; server 2: 102, 121.7, 123
    assert (sent, source) == ({"1": 4, "2": 3}, "wire")
    syslog_only = [o | {"source": "syslog"} for o in flap_history()]
    assert fc.registers_sent(syslog_only, [1, 2], W, ["syslog"]) == ("unknown", None)
    # a capture that saw nothing of this phone: zeros, what it saw
    assert fc.registers_sent(syslog_only, [1, 2], W, ["router capture"]) == ({"1": 0, "2": 0}, "wire")


def test_ending_within_over_and_undetermined():
    history = flap_history()
    assert fc.ending(history, 1, W, 160, 10.0)[:3] == (1, 3.0, True)
    assert fc.ending(history, 1, W, 160, 2.0)[:3] == (1, 3.0, False)
    stuck = [o for o in history if o["t"] < 140]
    ended, back, ok, said = fc.ending(stuck, 1, W, 160, 10.0)
    assert (ended, back, ok) == (2, None, False) and "not server 1" in said
    assert fc.ending(stuck, 1, W, 145, 10.0)[2] is None       # the run ended before its bound: not failed
    never_left = [obs(90, "wire", 1, "registered", 1)]
    assert fc.ending(never_left, 1, W, 160, 10.0)[:3] == (1, 0.0, True)


def test_phone_flap_and_its_report_rows():
    counted = fc.phone_flap("0004f2000001", flap_history(), {"working_server": 1, "servers": {"1": {"state": "registered"}}},
                            [1, 2], W, 160, {"seconds": 10.0, "text": "a + b = 10 s"}, ["router capture"])
    doc = counted.to_dict()
    assert doc["registrations_lost"] == {"1": 2, "2": 1} and doc["registers_sent"] == {"1": 4, "2": 3}
    assert doc["within_bound"] is True and doc["back_on_1_s"] == 3.0
    plan = flap_plan.plan("drop", 1, 40, 10)
    record = {"step": "flap", "plan": plan.to_dict(), "started": 100.0, "completed": True, "phones": [doc],
              "cuts": [{"index": 1, "outage_id": "x-o1", "start": 100.0, "end": 140.0}]}
    page = flap_report.html_section({"flaps": [record]})
    assert 'data-mac="0004f2000001"' in page and "server 1: 2, server 2: 1 (wire)" in page and "x-o1" in page


# ------------------------------------------------------------------------------------------------ the lab's truth

def test_ground_truth_window_counts():
    truth = GroundTruth()
    mac = "0004f2000001"
    truth.record(mac, "server_state", reg=1, server=1, state="registered")
    truth.record(mac, "working_server", reg=1, server=1)
    snap = truth.snapshot()["phones"][mac]
    t0 = snap["events"][0]["t"]
    # hand-written events at known times: lost server 1 at +2, nowhere from +2 to +3, server 2 from +3
    snap["events"] += [
        {"t": t0 + 2, "kind": "server_state", "data": {"reg": 1, "server": 1, "state": "unregistered"}},
        {"t": t0 + 2, "kind": "working_server", "data": {"reg": 1, "server": None}},
        {"t": t0 + 3, "kind": "server_state", "data": {"reg": 1, "server": 2, "state": "registered"}},
        {"t": t0 + 3, "kind": "working_server", "data": {"reg": 1, "server": 2}},
        {"t": t0 + 9, "kind": "server_state", "data": {"reg": 1, "server": 1, "state": "registered"}},
        {"t": t0 + 9, "kind": "server_state", "data": {"reg": 1, "server": 1, "state": "unregistered"}},   # after end
    ]
    snap["registers"] = [{"t": t0 + k, "reg": 1, "server": 1 + k % 2} for k in range(10)] + [
        {"t": t0 + 1, "reg": 2, "server": 1}]
    counts = window_counts(snap, t0 + 1, t0 + 8)
    assert counts == {"registers_sent": {"1": 3, "2": 4}, "registrations_lost": {"1": 1},
                      "registered_nowhere_s": pytest.approx(1.0)}


def test_ground_truth_keeps_register_attempts_apart_from_events():
    truth = GroundTruth(keep=5)
    for _ in range(20):
        truth.register_sent("0004f2000001", 1, 1)
    truth.record("0004f2000001", "boot")
    snap = truth.snapshot()["phones"]["0004f2000001"]
    assert len(snap["registers"]) == 20 and [e["kind"] for e in snap["events"]] == ["boot"]


def test_the_shipped_flap_playbook_loads_and_plans_ten_by_ten(tmp_path):
    from conftest import ROOT

    pb = playbook.load(ROOT / "playbooks" / "wan-flap.yml")
    [flap] = [s for s in pb.steps if isinstance(s, playbook.FlapStep)]
    plan = flap.flap.plan()
    assert (len(plan.cycles), flap.flap.down_s, flap.flap.up_s) == (5, 10, 10)
    assert all(8 <= c.down_s <= 12 and c.max_duration <= c.down_s + 11 for c in plan.cycles)


def test_cuts_take_their_times_from_the_outage_records_at_the_end():
    from fleet.experiment.flap_verdict import sync_cuts, window_of

    record = {"cuts": [{"index": 1, "outage_id": "e-o1", "start": 10.0, "end": 14.0},
                       {"index": 2, "outage_id": "e-o2", "start": None, "end": None},      # stopped while cutting
                       {"index": 3, "outage_id": "e-o3", "start": None, "end": None}], "finished": None}
    outages = [{"id": "e-o1", "start": 10.0, "end": 14.0, "wan_cut": "yes"},
               {"id": "e-o2", "start": 18.0, "end": 19.5, "wan_cut": "maybe", "deadman": "pid 7"},   # the cleanup's
               {"id": "e-o3", "start": 25.0, "end": 25.0, "wan_cut": "no"}]
    sync_cuts(record, outages)
    assert [(c["start"], c["end"]) for c in record["cuts"]] == [(10.0, 14.0), (18.0, 19.5), (None, None)]
    assert window_of(record, 30.0) == FlapWindow(10.0, 30.0, 19.5)
