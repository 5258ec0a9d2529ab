"""Two copies of one phone's push task (a Redis restart redelivers it, or the driver resends it): what the late copy
found before the reboot must not overwrite the reboot the other copy made.

Seen in tests/test_rollout_faults.py::test_redis_restarted_mid_rollout[8] (a fresh-clone run): one copy rebooted
the phone and recorded "verifying"; the other, whose call check met the phone going down (ConnectionError), wrote
"deferred" over it. The driver sent the phone again, the new copy found the reboot done and did nothing, and the
phone stayed "dispatched" until the test's budget ran out. The store is a real Redis; the phone control and the
rollout's plan are fakes (the layer under test is fleet.rollout.work with the store).
"""
from __future__ import annotations

import secrets as pysecrets
import time
from types import SimpleNamespace

import pytest

from fleet.drivers.control.call_check import CallCheck
from fleet.rollout import work as rollout_work
from fleet.state.store import RolloutStore, Store

MAC = "0004f2c0ffee"


class _CheckMeetsTheOtherCopy:
    """A phone control whose call check runs while another copy of the task claims and records the reboot."""

    def __init__(self, rs: RolloutStore, rid: str, found: CallCheck) -> None:
        self.rs, self.rid, self.found = rs, rid, found
        self.rebooted = 0

    def call_check(self) -> CallCheck:
        assert self.rs.claim_and_record_reboot(self.rid, MAC, 1, 1000.0)
        self.rs.set_phone(self.rid, MAC, state="verifying", verify_from="1000.1")
        return self.found

    def reboot(self, *_a, **_k) -> str:      # never reached: nothing may be sent by the late copy
        self.rebooted += 1
        return "rest safeRestart"


@pytest.fixture
def copy_of_push(redis_url, monkeypatch):
    """A push task for MAC in a fresh rollout on the session's Redis, its call check meeting the other copy."""
    rs = RolloutStore(Store(redis_url))
    rid = "copies-" + pysecrets.token_hex(4)
    rs.set_phone(rid, MAC, state="dispatched", attempt="1")
    plan = SimpleNamespace(site=SimpleNamespace(boot_server=SimpleNamespace(credentials="")),
                           phone=SimpleNamespace(credentials="phone_admin"), attempt=1, config_hash="new",
                           power_cycle_off_s=0, unchecked_reboot=False)
    creds = SimpleNamespace(credentials=lambda name: SimpleNamespace(username="admin", password="x"))

    def run(found: CallCheck) -> tuple[dict, dict, _CheckMeetsTheOtherCopy]:
        control = _CheckMeetsTheOtherCopy(rs, rid, found)
        monkeypatch.setattr(rollout_work, "_record", lambda r, m, s: (None, creds, None, rs, rs.phone(r, m), plan))
        monkeypatch.setattr(rollout_work.phones, "for_phone", lambda *a, **k: control)
        monkeypatch.setattr(rs, "config_version", lambda mac: "old")
        out = rollout_work._push(rid, MAC, 1, ())
        return out, rs.phone(rid, MAC), control
    return run


def test_a_copy_whose_call_check_met_the_reboot_does_not_defer_the_phone(copy_of_push):
    out, record, control = copy_of_push(CallCheck("unknown", "REST callStatus v2: ConnectionError"))
    assert record["state"] == "verifying" and "deferred_at" not in record, record
    assert out["state"] == "verifying" and control.rebooted == 0, out


def test_a_copy_refused_at_its_call_check_does_not_fail_a_phone_another_copy_rebooted(copy_of_push):
    out, record, control = copy_of_push(CallCheck("refused", "HTTP 401"))
    assert record["state"] == "verifying" and "error" not in record, record
    assert out["state"] == "verifying" and control.rebooted == 0, out


def test_without_another_copy_the_deferral_is_written_and_on_the_change_feed(redis_url):
    rs = RolloutStore(Store(redis_url))
    rid = "copies-" + pysecrets.token_hex(4)
    rs.set_phone(rid, MAC, state="dispatched")
    before = rs.feed_positions(rid)
    assert rs.set_phone_unless_overtaken(rid, MAC, 1, "dispatched", state="deferred", deferred_reason="in-call: 1 call")
    assert rs.phone(rid, MAC)["state"] == "deferred"
    changed, _ = rs.feed_read(before)
    assert changed == {MAC}


def test_a_claim_whose_copy_died_before_recording_the_reboot_does_not_stop_the_next_copy(redis_url):
    """A claim an older worker took before writing reboot_at (the two were separate steps), and nothing is sent
    before that: a copy that died in between sent nothing. The next copy must still defer, or publish (its claim
    then records the old one, and the driver confirms it after its dispatch stall), not stop: refused, the phone
    would stay in flight for good (found by review of the first version of this guard)."""
    rs = RolloutStore(Store(redis_url))
    rid = "copies-" + pysecrets.token_hex(4)
    rs.set_phone(rid, MAC, state="publishing")
    assert rs.claim_reboot(rid, MAC, 1)
    assert rs.set_phone_unless_overtaken(rid, MAC, 1, "publishing", state="deferred", deferred_reason="in-call")
    assert rs.phone(rid, MAC)["state"] == "deferred"
    rs.set_phone(rid, MAC, state="rebooting", reboot_at="1000.0")
    assert not rs.set_phone_unless_overtaken(rid, MAC, 1, "deferred", state="deferred", deferred_reason="later")
    assert rs.phone(rid, MAC)["state"] == "rebooting"


def test_a_copy_whose_state_moved_on_since_it_read_it_writes_nothing(redis_url):
    """Another copy began publishing (before any claim): this copy's deferral would free the phone's slot while the
    other goes on to reboot it, one over max_unavailable."""
    rs = RolloutStore(Store(redis_url))
    rid = "copies-" + pysecrets.token_hex(4)
    rs.set_phone(rid, MAC, state="publishing")
    assert not rs.set_phone_unless_overtaken(rid, MAC, 1, "dispatched", state="deferred", deferred_reason="x")
    assert rs.phone(rid, MAC)["state"] == "publishing" and "deferred_reason" not in rs.phone(rid, MAC)


# ---------------------------------------------------------------- two copies publishing
MASTER = (b'<?xml version="1.0" standalone="yes"?>\n<APPLICATION APP_FILE_PATH="sip.ld" '
          b'CONFIG_FILES="[PHONE_MAC_ADDRESS]-reg.cfg, site.cfg"/>\n')


def _boot_and_record(tmp_path, redis_url: str, state: str) -> tuple:
    """A boot directory holding the phone's own master, and a fresh rollout's record of the phone in `state`."""
    boot = tmp_path / "boot"
    boot.mkdir()
    (boot / f"{MAC}.cfg").write_bytes(MASTER)
    rs = RolloutStore(Store(redis_url))
    rid = "copies-" + pysecrets.token_hex(4)
    rs.set_phone(rid, MAC, state=state, attempt="1")
    return boot, rs, rid


def _publish_copy(rs: RolloutStore, rid: str, stale: dict, boot, attempt: int = 1) -> bool:
    from fleet.config.inventory import Credentials
    return rollout_work._publish(rid, MAC, dict(stale), rs, {"reg.1.server.1.expires": "61"}, f"file://{boot}/",
                                 Credentials(), attempt=attempt)


def test_a_copy_publishing_after_the_other_keeps_its_backup_marks_and_the_backup(redis_url, tmp_path):
    """Both copies read the record before either published; the late one reads the files the first one wrote.
    Its marks ("same") would tell a rollback there is nothing to restore: the first copy's stand."""
    from fleet.phoneconf import polycom
    from fleet.rollout import backups as rollout_backups

    boot, rs, rid = _boot_and_record(tmp_path, redis_url, "dispatched")
    stale = rs.phone(rid, MAC)
    assert _publish_copy(rs, rid, stale, boot) is True
    first = rs.phone(rid, MAC)
    ours = polycom.fleet_file_name(MAC)
    assert (first[f"backed_up:{MAC}.cfg"], first[f"backed_up:{ours}"]) == ("yes", "absent"), first
    # the late copy finds the state moved on ("publishing" is not the "dispatched" it read): it does nothing
    assert _publish_copy(rs, rid, stale, boot) is False
    assert rs.phone(rid, MAC) == first
    # ... unless the driver has meanwhile put "dispatched" back (it resends a phone that looks stalled): then it
    # publishes (the same files) again, and reads the files the first copy wrote as the phone's old ones
    rs.set_phone(rid, MAC, state="dispatched")
    assert _publish_copy(rs, rid, stale, boot) is True
    record = rs.phone(rid, MAC)
    assert (record[f"backed_up:{MAC}.cfg"], record[f"backed_up:{ours}"]) == ("yes", "absent"), record
    assert (boot / rollout_backups.backup_name(f"{MAC}.cfg", rid)).read_bytes() == MASTER


def test_a_copy_publishing_after_a_copy_that_died_holding_the_claim_publishes(redis_url, tmp_path):
    """(a claim an older worker took alone, see above)"""
    boot, rs, rid = _boot_and_record(tmp_path, redis_url, "publishing")
    assert rs.claim_reboot(rid, MAC, 1)             # and died before recording reboot_at: nothing was sent
    assert _publish_copy(rs, rid, rs.phone(rid, MAC), boot) is True
    assert rs.phone(rid, MAC)[f"backed_up:{MAC}.cfg"] == "yes"


def test_a_copy_that_comes_to_publish_after_the_other_claimed_the_reboot_writes_nothing(redis_url, tmp_path):
    boot, rs, rid = _boot_and_record(tmp_path, redis_url, "dispatched")
    stale = rs.phone(rid, MAC)
    assert rs.claim_and_record_reboot(rid, MAC, 1, 1000.0)
    rs.set_phone(rid, MAC, state="verifying", verify_from="1000.1")
    assert _publish_copy(rs, rid, stale, boot) is False
    assert rs.phone(rid, MAC)["state"] == "verifying"
    assert sorted(p.name for p in boot.iterdir()) == [f"{MAC}.cfg"] and (boot / f"{MAC}.cfg").read_bytes() == MASTER


# ---------------------------------------------------------------- the reboot: claimed and recorded in one step
def _fresh(redis_url: str, state: str) -> tuple[RolloutStore, str]:
    rs = RolloutStore(Store(redis_url))
    rid = "copies-" + pysecrets.token_hex(4)
    rs.set_phone(rid, MAC, state=state, attempt="1")
    return rs, rid


def test_the_claim_and_the_record_of_a_reboot_are_one_step(redis_url):
    rs, rid = _fresh(redis_url, "publishing")
    before = rs.feed_positions(rid)
    assert rs.claim_and_record_reboot(rid, MAC, 1, 1234.5)
    record = rs.phone(rid, MAC)
    assert (record["state"], float(record["reboot_at"]), record["reboot_tried"]) == ("rebooting", 1234.5, ""), record
    assert rs.feed_read(before)[0] == {MAC}
    rs.set_phone(rid, MAC, state="verifying")
    assert not rs.claim_and_record_reboot(rid, MAC, 1, 2000.0)      # a second copy: refused, the record stands
    assert rs.phone(rid, MAC)["state"] == "verifying" and float(rs.phone(rid, MAC)["reboot_at"]) == 1234.5
    assert rs.claim_and_record_reboot(rid, MAC, 2, 2000.0)          # the next attempt has a claim of its own


def test_a_claim_an_older_worker_left_unrecorded_is_recorded_as_of_now(redis_url):
    """Left unrecorded, the phone stayed "publishing": every resent copy published again and lost the claim again.
    Recorded, it is "rebooting" and the driver's dispatch stall asks a copy to find out (policy CONFIRM_REBOOT).
    As of now, not the claim's time: that worker sent nothing before recording, and from the claim's time the
    driver failed the phone (past verify.within) while the confirmation rebooted it."""
    rs, rid = _fresh(redis_url, "publishing")
    assert rs.claim_reboot(rid, MAC, 1)
    now = time.time() + 50
    assert not rs.claim_and_record_reboot(rid, MAC, 1, now)
    record = rs.phone(rid, MAC)
    assert record["state"] == "rebooting" and float(record["reboot_at"]) == now, record


class _PhoneBeingRebooted:
    """A phone control for a copy that finds the reboot claimed: every call is counted (none may be made while
    the claimer may still be sending the reboot)."""

    def __init__(self, reboot_raises: BaseException | None = None) -> None:
        self.calls: list[str] = []
        self.reboot_raises = reboot_raises

    def call_check(self) -> CallCheck:
        self.calls.append("call_check")
        return CallCheck("idle", "no call")

    def rebooted_since(self, since, params, tried) -> bool:
        self.calls.append("rebooted_since")
        return False

    def reboot(self, announce, fallback: bool = True) -> str:
        self.calls.append("reboot")
        announce("rest safeRestart")
        if self.reboot_raises is not None:
            raise self.reboot_raises
        return "rest safeRestart"

    def reboot_answered_at(self) -> float:
        return time.time()

    def may_stay_up(self, sent, params) -> bool:
        return False


@pytest.fixture
def push_copy(redis_url, monkeypatch):
    """Run one copy of the push task for MAC against a record set up by the test, with `control` as the phone."""
    rs, rid = _fresh(redis_url, "dispatched")
    plan = SimpleNamespace(site=SimpleNamespace(boot_server=SimpleNamespace(credentials="", url="", master_file=""),
                                                phones=[]),
                           phone=SimpleNamespace(credentials="phone_admin"), attempt=1, config_hash="new",
                           power_cycle_off_s=0, unchecked_reboot=False, params={}, secret_refs={},
                           restore_from="")
    creds = SimpleNamespace(credentials=lambda name: SimpleNamespace(username="admin", password="x"),
                            resolve_param=lambda ref: ref)

    def run(control, retry_on=(), version: str = "old") -> dict:
        monkeypatch.setattr(rollout_work, "_record", lambda r, m, s: (None, creds, None, rs, rs.phone(r, m), plan))
        monkeypatch.setattr(rollout_work.phones, "for_phone", lambda *a, **k: control)
        monkeypatch.setattr(rs, "config_version", lambda mac: version)
        return rollout_work._push(rid, MAC, 1, retry_on)
    run.rs, run.rid = rs, rid
    return run


def test_a_copy_delivered_again_while_the_claimer_sends_the_reboot_sends_nothing(push_copy):
    """The broker delivers a copy again (a Redis restart, a visibility timeout) while the first still waits on the
    phone: the phone has not rebooted yet, and a copy that found out at once sent it a second reboot."""
    rs, rid = push_copy.rs, push_copy.rid
    assert rs.claim_and_record_reboot(rid, MAC, 1, time.time())
    control = _PhoneBeingRebooted()
    out = push_copy(control)
    assert control.calls == [] and out["state"] == "rebooting", (control.calls, out)
    assert rs.phone(rid, MAC)["state"] == "rebooting"


def test_a_copy_the_driver_sent_after_its_dispatch_stall_finds_out_and_resends(push_copy):
    rs, rid = push_copy.rs, push_copy.rid
    at = time.time() - 61
    assert rs.claim_and_record_reboot(rid, MAC, 1, at)
    rs.set_phone(rid, MAC, confirm_sent=at + 60.5)              # policy CONFIRM_REBOOT: written before it sends
    control = _PhoneBeingRebooted()
    out = push_copy(control)
    assert control.calls == ["rebooted_since", "reboot"], control.calls
    record = rs.phone(rid, MAC)
    assert out["state"] == record["state"] == "verifying" and record["reboot_via"].endswith("resent after a lost task")


def test_a_reboot_that_timed_out_is_found_out_by_its_retry_only_after_the_grace(push_copy, monkeypatch):
    """The copy that sent it gave up on it (a timeout left to the retry policy). Its retry comes 1-4 s later: a
    phone that took the request late may not have gone down yet, reads "not rebooted", and a retry that found out
    at once sent it a second reboot. The retry finds out once the grace has passed (the driver asks then)."""
    from fleet.drivers.errors import DeviceTimeout

    rs, rid = push_copy.rs, push_copy.rid
    monkeypatch.setattr(rollout_work, "_publish", lambda *a, **k: True)
    timed_out = _PhoneBeingRebooted(DeviceTimeout(f"phone {MAC}", "no answer in 5s"))
    with pytest.raises(DeviceTimeout):
        push_copy(timed_out, retry_on=(DeviceTimeout,))
    record = rs.phone(rid, MAC)
    assert record["state"] == "rebooting" and float(record["reboot_abandoned"]) >= float(record["reboot_at"]), record
    early = _PhoneBeingRebooted()
    assert push_copy(early)["state"] == "rebooting" and early.calls == [], early.calls
    given_up = time.time() - rollout_work.policy.ABANDONED_REBOOT_GRACE_S - 0.1
    rs.set_phone(rid, MAC, reboot_at=given_up - 5, reboot_abandoned=given_up)
    late = _PhoneBeingRebooted()
    push_copy(late)
    assert late.calls == ["rebooted_since", "reboot"], late.calls


class _SlowPowerCycle(_PhoneBeingRebooted):
    """A reboot that outlasts the driver's patience (a power cycle's off time): while it runs, the driver's
    confirmation finds the phone rebooted and verifies it."""

    def __init__(self, meanwhile) -> None:
        super().__init__()
        self.meanwhile = meanwhile

    def reboot(self, announce, fallback: bool = True) -> str:
        self.calls.append("reboot")
        announce("power-cycle")
        self.meanwhile()
        return "power cycle"


def test_a_sender_that_returns_after_its_reboot_was_found_out_leaves_the_record_alone(push_copy, monkeypatch):
    """Its unconditional "verifying" put a verified phone back under verification from the old reboot, past
    verify.within: the driver failed and rolled back a good phone."""
    rs, rid = push_copy.rs, push_copy.rid
    monkeypatch.setattr(rollout_work, "_publish", lambda *a, **k: True)
    control = _SlowPowerCycle(lambda: rs.set_phone(rid, MAC, state="verified", verify_from="1.0"))
    out = push_copy(control)
    record = rs.phone(rid, MAC)
    assert record["state"] == "verified" and record["verify_from"] == "1.0" and "power_cycle_at" in record, record
    assert out["state"] == "verified" and "overtaken" in [e["kind"] for e in rs.events(rid)], out


def test_a_retry_that_the_driver_asked_before_the_sender_gave_up_still_waits_the_grace(push_copy):
    """The driver's stall ran out while the sender still waited on a long REST lock; the sender gave up 2 s later:
    the driver's copy, arriving now, must not find out yet (a phone that took the reboot late is still up)."""
    rs, rid = push_copy.rs, push_copy.rid
    at = time.time() - 61
    assert rs.claim_and_record_reboot(rid, MAC, 1, at)
    rs.set_phone(rid, MAC, confirm_sent=at + 60.5, reboot_abandoned=time.time() - 2)
    control = _PhoneBeingRebooted()
    assert push_copy(control)["state"] == "rebooting" and control.calls == [], control.calls


def test_a_sender_whose_power_cycle_fails_after_the_phone_was_verified_does_not_fail_it(push_copy, monkeypatch):
    from fleet.drivers.errors import DriverError
    from fleet.worker.errors import TaskFailed

    rs, rid = push_copy.rs, push_copy.rid
    monkeypatch.setattr(rollout_work, "_publish", lambda *a, **k: True)

    def verified_then_refused() -> None:
        rs.set_phone(rid, MAC, state="verified")
        raise DriverError("switch poe1", "port on refused")
    with pytest.raises(TaskFailed, match="not recorded"):
        push_copy(_SlowPowerCycle(verified_then_refused))
    assert rs.phone(rid, MAC)["state"] == "verified", rs.phone(rid, MAC)


def test_a_sender_that_returns_after_a_confirmation_resent_the_reboot_leaves_the_new_one(push_copy, monkeypatch):
    rs, rid = push_copy.rs, push_copy.rid
    monkeypatch.setattr(rollout_work, "_publish", lambda *a, **k: True)
    control = _SlowPowerCycle(lambda: rs.set_phone(rid, MAC, reboot_at=time.time() + 5))   # resent: a new reboot
    push_copy(control)
    assert rs.phone(rid, MAC)["state"] == "rebooting", rs.phone(rid, MAC)


def test_a_confirmation_that_finds_the_reboot_recorded_sends_nothing(push_copy):
    """The driver asked (its stall passed), and the sender recorded its reboot before the confirmation ran."""
    rs, rid = push_copy.rs, push_copy.rid
    at = time.time() - 61
    assert rs.claim_and_record_reboot(rid, MAC, 1, at)
    rs.set_phone(rid, MAC, confirm_sent=at + 60.5)
    real_phone = rs.phone
    reads = []

    def read_then_recorded(r, m):
        record = real_phone(r, m)
        reads.append(record.get("state"))
        if len(reads) == 1:    # the task's own read: "rebooting"; then the sender records before the confirmation
            rs.set_phone(rid, MAC, state="verifying", verify_from=str(at + 1))
        return record
    rs.phone = read_then_recorded
    control = _PhoneBeingRebooted()
    push_copy(control)
    rs.phone = real_phone
    assert control.calls == [] and rs.phone(rid, MAC)["state"] == "verifying", (control.calls, rs.phone(rid, MAC))


def test_a_confirmation_claim_asked_again_with_its_own_value_is_its_own(redis_url):
    """The confirmation's claim (ATTEMPT-confirm) as redis-py's retry would ask it twice: the same value is the
    caller's; another caller's is refused."""
    from fleet.state import store as store_mod

    rs, rid = _fresh(redis_url, "rebooting")
    key = store_mod.K.rollout_reboot(rid, MAC, "1-confirm")
    assert rs.r.eval(store_mod.CLAIM_ONCE, 1, key, "mine", 60) == 1
    assert rs.r.eval(store_mod.CLAIM_ONCE, 1, key, "mine", 60) == 1
    assert rs.r.eval(store_mod.CLAIM_ONCE, 1, key, "theirs", 60) == 0
    assert rs.claim_reboot(rid, MAC, "2-confirm") and not rs.claim_reboot(rid, MAC, "2-confirm")


def test_a_sender_taken_for_lost_announces_nothing_over_its_confirmation(push_copy, monkeypatch):
    """The confirmation resent the reboot (a new reboot_at, its own methods): the old sender's next announcement
    must not replace the methods the confirmation's successor would look for."""
    rs, rid = push_copy.rs, push_copy.rid
    monkeypatch.setattr(rollout_work, "_publish", lambda *a, **k: True)

    class _Resent(_PhoneBeingRebooted):
        def reboot(self, announce, fallback: bool = True) -> str:
            rs.set_phone(rid, MAC, reboot_at=time.time() + 5, reboot_tried="rest safeRestart")   # the confirmation's
            announce("web")
            return "web"
    push_copy(_Resent())
    assert rs.phone(rid, MAC)["reboot_tried"] == "rest safeRestart", rs.phone(rid, MAC)


def test_a_claim_whose_reply_was_lost_is_the_callers_when_it_asks_again(redis_url):
    """redis-py runs a script again after a connection error; the claim it took the first time is its own."""
    rs, rid = _fresh(redis_url, "publishing")
    assert rs.claim_and_record_reboot(rid, MAC, 1, 1234.5)
    assert rs.claim_and_record_reboot(rid, MAC, 1, 1234.5)
    assert not rs.claim_and_record_reboot(rid, MAC, 1, 1234.25)     # another copy's own time: not its claim


def test_a_late_copy_that_finds_the_files_applied_does_not_write_skipped_over_verified(push_copy, monkeypatch):
    """The first copy pushed, rebooted, and the driver verified the phone and stored its config version; a late
    copy (read the record while "dispatched") finds the version already there."""
    rs, rid = push_copy.rs, push_copy.rid
    real_phone = rs.phone

    def read_then_overtaken(r, m):
        record = real_phone(r, m)                           # "dispatched", as the late copy read it
        rs.set_phone(rid, MAC, state="verified", settled_at=time.time())
        return record
    monkeypatch.setattr(rs, "phone", read_then_overtaken)
    out = push_copy(_PhoneBeingRebooted(), version="new")      # the plan's config hash: applied already
    monkeypatch.setattr(rs, "phone", real_phone)
    assert rs.phone(rid, MAC)["state"] == "verified", (out, rs.phone(rid, MAC))


def test_a_copy_that_loses_the_claim_after_publishing_sends_nothing(push_copy, monkeypatch):
    """Both copies published (the same files); the other claimed the reboot first: this one sends no reboot and
    leaves the other's record as it is."""
    rs, rid = push_copy.rs, push_copy.rid

    def publish_while_the_other_claims(*a, **k) -> bool:
        assert rs.claim_and_record_reboot(rid, MAC, 1, 1234.5)
        return True
    monkeypatch.setattr(rollout_work, "_publish", publish_while_the_other_claims)
    control = _PhoneBeingRebooted()
    out = push_copy(control)
    record = rs.phone(rid, MAC)
    assert control.calls == ["call_check"] and out["state"] == "rebooting", (control.calls, out)
    assert record["state"] == "rebooting" and float(record["reboot_at"]) == 1234.5 and "reboot_tried" in record
    assert record["reboot_tried"] == "", record
