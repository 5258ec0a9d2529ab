"""A rollout's work on one phone: push (render, back up, publish, reboot), confirm a lost reboot, roll back,
and remove a finished rollout's backups from a site's boot server.

Plain functions (no Celery), called by the thin tasks in fleet/rollout/tasks.py.
Every function is idempotent per (rollout, phone, attempt): a redelivered
or retried task finds what its predecessor did in the phone's rollout record
and carries on from there. The reboot, the one step that cannot simply be
repeated, is claimed and recorded in Redis in one step before it is sent
(`RolloutStore.claim_and_record_reboot`); a copy that finds it claimed does
not send it, and finds out whether it went out (confirm_reboot) only once
the copy that sent it is known to be done with it (_may_confirm).

A failure settles the phone (`failed`, `rollback_failed`) with the reason
and raises TaskFailed, so the task shows as failed. The one exception:
errors the caller names in `retry_on` (a device that timed out, while the
task still has retries left) leave the phone as it is and propagate, so
the task's declared retry policy can try again.
"""
from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from typing import Iterator

from fleet.config import inventory as inv_mod
from fleet import phones
from fleet.rollout import record_check as plan_check
from fleet.phoneconf import polycom
from fleet.rollout import backups as rollout_backups
from fleet.rollout import power_fallback
from fleet.rollout import policy
from fleet.rollout.policy import FINISHED
from fleet.phoneconf import secrets as secret_params
from fleet.sites import files as site_files
from fleet.drivers.errors import DeviceTimeout, DriverError
from fleet.drivers.publish import kept as kept_publishers, open_publisher
from fleet.drivers.publish.read_once import ReadOnce
from fleet.base.failpoints import failpoint
from soundpoint.values import plural
from fleet.base.steps import journal, step, traced
from fleet.state.store import RolloutStore, Store
from fleet.worker.errors import TaskFailed, failure_text
from fleet.worker.context import context, stores

log = logging.getLogger(__name__)

Retryable = tuple[type[BaseException], ...]


def _settle(rs: RolloutStore, rid: str, mac: str, state: str, exc: BaseException) -> TaskFailed:
    """Settle the phone as `state` with why (the driver counts it against the budget); the error to raise."""
    why = failure_text(exc)[:300]
    rs.set_phone(rid, mac, state=state, error=why, settled_at=time.time())
    return TaskFailed(f"rollout {rid}: phone {mac} {state}: {why}")


@contextmanager
def _settles_as(rs: RolloutStore, rid: str, mac: str, state: str, retry_on: Retryable = (),
                waits_on: list[float] | None = None) -> Iterator[None]:
    """Any device, record or value error inside settles the phone as `state` and raises TaskFailed;
    errors in `retry_on` pass through untouched for the task to retry. With `waits_on` (work done once a reboot is
    claimed), only while the record still waits on the reboot recorded at `waits_on[0]` (_settle_if_still_rebooting)."""
    try:
        yield
    except retry_on:
        raise
    except (DriverError, KeyError, ValueError) as exc:
        if waits_on is not None:
            raise _settle_if_still_rebooting(rs, rid, mac, waits_on[0], exc) from None
        raise _settle(rs, rid, mac, state, exc) from None


def _record(rid: str, mac: str, settle_as: str) -> tuple[inv_mod.Inventory, inv_mod.Secrets, Store, RolloutStore,
                                                          dict, plan_check.Checked]:
    """The phone's rollout record, re-checked (plan_check) before anything acts on it.

    A record that fails the check settles the phone as `settle_as` with the
    reason and touches nothing else; a record that does not exist (or a
    phone this worker does not know) only fails the task. Either way the
    task fails with the reason.
    """
    inv, secrets = context()
    store, rs = stores()
    state = rs.phone(rid, mac)   # the full record: state, this phone's plan, backup flags
    try:
        plan = plan_check.check(inv, rid, mac, state)
    except plan_check.PlanRefused as exc:
        log.warning("rollout %s: refused the record of phone %s: %s", rid, mac, exc)
        if state and state.get("state") not in rs.SETTLED:
            rs.set_phone(rid, mac, state=settle_as, error=f"refused: {exc}"[:300], settled_at=time.time())
        raise TaskFailed(f"rollout {rid}: phone {mac}: record refused: {exc}") from None
    return inv, secrets, store, rs, state, plan


def _boot_credentials(secrets: inv_mod.Secrets, site: inv_mod.Site) -> inv_mod.Credentials:
    return secrets.credentials(site.boot_server.credentials) if site.boot_server.credentials else inv_mod.Credentials()


def _journal(rid: str, mac: str, attempt: int | None = None):
    """The rollout's event log, for the device steps of one phone (fleet.base.steps)."""
    _, rs = stores()
    extra = {} if attempt is None else {"attempt": attempt}
    return journal(lambda kind, **fields: rs.log(rid, kind, **fields), mac=mac, **extra)


def push(rid: str, mac: str, attempt: int, retry_on: Retryable = ()) -> dict:
    """Render, back up, publish and reboot one phone. Idempotent per (rollout, phone, attempt).

    Each device step (call check, publish, reboot, state query) is traced into the rollout's history."""
    with _journal(rid, mac, attempt):
        return _push(rid, mac, attempt, retry_on)


def _push(rid: str, mac: str, attempt: int, retry_on: Retryable) -> dict:
    inv, secrets, store, rs, state, plan = _record(rid, mac, "failed")
    site, phone = plan.site, plan.phone
    if plan.attempt != attempt or state.get("state") in rs.SETTLED:
        return {"state": state.get("state"), "note": "already done for this attempt"}
    # a credential this worker cannot resolve (another secrets file, an env: variable it lacks) fails the phone
    # with the reason, instead of failing only the task and leaving the phone "dispatched" to be re-sent
    try:
        creds = secrets.credentials(phone.credentials)
        boot_creds = _boot_credentials(secrets, site)
    except (KeyError, ValueError) as exc:
        raise _settle(rs, rid, mac, "failed", DriverError(f"phone {mac}", f"credentials: {failure_text(exc)}")) from None
    if state.get("state") == "rebooting" and state.get("reboot_at"):
        if not _may_confirm(state):
            return {"state": "rebooting", "note": "reboot claimed by another copy of this task, maybe still sending it"}
        return confirm_reboot(rid, mac, attempt, float(state["reboot_at"]),
                              phones.for_phone(phone, creds, inv, secrets, store), plan.params, rs,
                              _tried(state.get("reboot_tried")))
    if state.get("reboot_at"):
        return {"state": state.get("state"), "note": "already done for this attempt"}
    if rs.config_version(mac) == plan.config_hash:
        # the phone already runs these files; written only over the state this copy read: a late copy finds the
        # files another copy pushed and verified, and "skipped" over "verified" would misreport the rollout
        if not rs.set_phone_unless_overtaken(rid, mac, attempt, state.get("state", ""), state="skipped",
                                             settled_at=time.time()):
            return _overtaken(rs, rid, mac, "the phone already runs these files")
        return {"state": "skipped"}
    control = phones.for_phone(phone, creds, inv, secrets, store)   # one session for the check and the reboot
    with traced("call check"):
        check = control.call_check()
    if check.state == "refused":
        # a wrong password stays wrong: fail the phone now, with why, rather than defer it as possibly in a call
        # until the wave's progress deadline (nothing was written or sent to it yet)
        why = f"call check refused: {check.reason}"[:300]
        if not rs.set_phone_unless_overtaken(rid, mac, attempt, state.get("state", ""), state="failed", error=why,
                                             settled_at=time.time()):
            return _overtaken(rs, rid, mac, f"call check refused: {check.reason}")
        rs.log(rid, "failed", mac=mac, reason=why)
        raise TaskFailed(f"rollout {rid}: phone {mac} failed: {why}")
    # strategy.power_cycle_fallback: a phone that answers neither the call check nor a read-only identity request is
    # hung, not in a call we could protect (fleet.rollout.power_fallback)
    hung = ""
    if not check.may_reboot and check.state == "unknown" and plan.power_cycle_off_s:
        with traced("identity"):
            hung = power_fallback.answers_nothing(control)
        if hung:
            rs.log(rid, "unanswered", mac=mac, call_check=check.reason[:300], identity=hung[:300])
    # the playbook's reboot_without_call_check covers only a family with no way to tell; a check that failed defers
    if not check.may_reboot and not hung and not (plan.unchecked_reboot and control.family.call_state_source is None):
        if not rs.set_phone_unless_overtaken(rid, mac, attempt, state.get("state", ""), state="deferred",
                                             deferred_at=time.time(),
                                             deferred_reason=f"{check.state}: {check.reason}"[:300]):
            return _overtaken(rs, rid, mac, f"call check {check.state}: {check.reason}")
        rs.log(rid, "deferred", mac=mac, call_state=check.state, reason=check.reason[:300])
        return {"state": "deferred", "reason": check.reason}
    if not check.may_reboot and not hung:
        rs.log(rid, "reboot-unchecked", mac=mac, reason=f"{check.reason} (strategy.reboot_without_call_check)"[:300])
    with _settles_as(rs, rid, mac, "failed", retry_on):
        resolved = secret_params.resolve(plan.params, plan.secret_refs, secrets.resolve_param)
        if not _publish(rid, mac, state, rs, resolved, site.boot_server.url, boot_creds,
                        site.boot_server.master_file or "", _restore_marks(inv, rs, plan.restore_from, mac),
                        _other_phones(site, mac) if plan.restore_from else (), attempt=attempt):
            return _overtaken(rs, rid, mac, "about to publish")
        reboot_at = time.time()
        if not rs.claim_and_record_reboot(rid, mac, attempt, reboot_at):
            # another copy holds this attempt's reboot, recorded with its claim: it may be sending it right now
            return {"state": "rebooting", "note": "reboot claimed by another copy of this task"}
        failpoint("rollout.reboot_recorded", mac)
        # a retry after a reboot that timed out finds state "rebooting" and goes through confirm_reboot: the
        # claim above keeps it from sending a second reboot the phone may already have had, and the methods
        # announced below tell it which proof to look for (a web UI fallback is not idempotent as check-sync is)
        sent: list[str] = []
        try:
            with _settles_as(rs, rid, mac, "failed", retry_on, waits_on=[reboot_at]):
                how = _reboot(rid, mac, control, plan, secrets, rs, sent, reboot_at)
        except retry_on:
            # given up to the retry policy, when: a copy may find out once the phone had time to take it (_may_confirm);
            # not over a record that moved on (a confirmation found out meanwhile)
            rs.set_phone_if_still_rebooting(rid, mac, reboot_at, reboot_abandoned=time.time())
            raise
        failpoint("rollout.reboot_sent", mac)
        if not rs.set_phone_if_still_rebooting(rid, mac, reboot_at, state="verifying", reboot_via=how,
                                               verify_from=_reboot_left(control, reboot_at),
                                               **_may_stay_up(control, sent, plan.params)):
            # a power cycle outlasted the driver's patience: a copy it sent found out meanwhile, and its record stands
            return _overtaken(rs, rid, mac, f"reboot sent ({how}), but found out by the driver's confirmation first")
        return {"state": "verifying", "reboot_at": reboot_at}


def _settle_if_still_rebooting(rs: RolloutStore, rid: str, mac: str, reboot_at: float, exc: BaseException) -> TaskFailed:
    """_settle for an error after the reboot was claimed: "failed" only while the record still waits on that
    reboot. A power cycle that fails after the driver's confirmation verified the phone must not fail it."""
    why = failure_text(exc)[:300]
    if not rs.set_phone_if_still_rebooting(rid, mac, reboot_at, state="failed", error=why, settled_at=time.time()):
        rs.log(rid, "overtaken", mac=mac, reason=f"{why} (not recorded: the phone's record moved on)"[:300])
        return TaskFailed(f"rollout {rid}: phone {mac}: {why} (not recorded: another copy's record stands)")
    return TaskFailed(f"rollout {rid}: phone {mac} failed: {why}")


def _overtaken(rs: RolloutStore, rid: str, mac: str, found: str) -> dict:
    """This copy may record nothing: another copy of the task (redelivered, or resent by the driver) is ahead of
    it (it moved the phone's state on, or claimed and recorded its reboot), and that copy's record stands. What
    this copy found goes to the log."""
    rs.log(rid, "overtaken", mac=mac, reason=f"{found} (another copy of the task is ahead)"[:300])
    return {"state": rs.phone(rid, mac).get("state"), "note": "another copy of this task is ahead"}


def _may_confirm(state: dict) -> bool:
    """Whether a copy that finds the phone "rebooting" may find out if the reboot went out (confirm_reboot), and
    send it if not: only once the copy that claimed it is known to be done with it. Either it gave up on it (a
    timeout left to the retry policy: `reboot_abandoned`, when) at least ABANDONED_REBOOT_GRACE_S ago, or the
    driver saw no word of it for its dispatch stall and asked (`confirm_sent`, written before it sends the task).
    A copy the broker delivered again while the claimer still waits on the phone (its REST lock, a slow answer)
    would otherwise find no reboot yet and send a second one; so would the retry of a reboot that timed out, 1-4 s
    later, at a phone that took it late and had not gone down yet (the driver asks once the grace has passed)."""
    at = float(state["reboot_at"])
    abandoned = policy.given_up_at(state, at)
    if abandoned is not None:     # the grace counts even where the driver asked already (its stall ran out meanwhile)
        return time.time() - abandoned >= policy.ABANDONED_REBOOT_GRACE_S
    return float(state.get("confirm_sent") or 0) >= at


def _reboot_left(control: phones.PhoneControl, recorded_at: float) -> float:
    """From when a registration may prove the phone came back from the reboot just sent: when the phone's answer
    to it arrived, as the driver read it (the control's reboot_answered_at), else now. Not `recorded_at`
    (reboot_at, stamped before the REST lock's wait and any challenge): a refresh in between, or a lineInfo a
    poller was answered while the worker waited for the lock, said "registered" after it from a phone not yet
    rebooting. Not "now" where the answer's time is known: a phone quick to boot has registered again before
    a busy worker is done with the answer (bench/rollout.py 1000x2: 65 s against 27)."""
    answered = getattr(control, "reboot_answered_at", lambda: None)()
    return max(recorded_at, answered) if answered else time.time()


def _reboot(rid: str, mac: str, control: phones.PhoneControl, plan: plan_check.Checked, secrets: inv_mod.Secrets,
            rs: RolloutStore, sent: list[str], reboot_at: float) -> str:
    """The phone's reboot; with strategy.power_cycle_fallback, a reboot that got no answer at all is followed by a
    power cycle of its PoE port (announced first, like every method, for a successor that must find out)."""
    announce = _announcer(rs, rid, mac, reboot_at, sent)
    try:
        with traced("reboot"):
            return control.reboot(announce)
    except DeviceTimeout as exc:
        if not plan.power_cycle_off_s:
            raise
        rs.log(rid, "reboot-unanswered", mac=mac, reason=failure_text(exc)[:300])
    announce(power_fallback.POWER_CYCLE)

    def log(kind: str, **fields) -> None:
        rs.log(rid, kind, mac=mac, **fields)
        if kind == "power-off":
            failpoint("rollout.power_off", mac)     # a worker dying with the port off: confirm_reboot powers it
    with traced("power cycle", off_s=plan.power_cycle_off_s):
        how = power_fallback.power_cycle(plan.site, plan.phone, secrets, plan.power_cycle_off_s, log)
    return f"{how} (no answer to {', '.join(m for m in sent if m != power_fallback.POWER_CYCLE)})"[:300]


def _may_stay_up(control: phones.PhoneControl, sent: list[str], params: dict[str, str]) -> dict[str, str]:
    """Record fields for a phone the push may not reboot (check-sync with alwaysReboot=0): verification takes its
    registration after the push as the proof, and says whether a reboot was seen (fleet.rollout.policy)."""
    if not control.may_stay_up(sent, params):
        return {}
    return {"reboot_optional": "1", "reports_shutdown": "1" if control.reports_shutdown(params) else "0"}


def _other_phones(site: inv_mod.Site, mac: str) -> tuple[str, ...]:
    """The site's other phones, whose files a revert's shared master may name: only a revert needs them (a walk of
    the whole site per push was a visible share of a worker's time in a 1,000-phone rollout)."""
    return tuple(p.mac for p in site.phones if p.mac != mac)


def _restore_marks(inv: inv_mod.Inventory, rs: RolloutStore, restore_from: str, mac: str) -> tuple[str, dict] | None:
    """For a revert: (the reverted rollout, what it recorded about backing up this phone's files), checked."""
    if not restore_from:
        return None
    try:
        return restore_from, plan_check.restore_marks(inv, restore_from, mac, rs.phone(restore_from, mac))
    except plan_check.PlanRefused as exc:
        raise ValueError(str(exc)) from None


@step("publish")
def _publish(rid: str, mac: str, state: dict, rs: RolloutStore, params: dict[str, str], url: str,
             boot_creds: inv_mod.Credentials, named_master: str = "", restore: tuple[str, dict] | None = None,
             others: tuple[str, ...] = (), *, attempt: int | str) -> bool:
    """Back up the phone's current files (once) and write ours, the master file last; False: nothing done, another
    copy of this task (for `attempt`) is ahead (rs.set_phone_unless_overtaken), and has published already.

    Two copies of a task may run at once (a Redis restart redelivers one, the driver resends a stalled one). A
    copy behind the other must not write "publishing" over the other's "verifying", nor take the files the other
    just wrote for the phone's old ones: its backup marks ("same") would tell a rollback there is nothing to
    restore. So the state is written only while it is still the one this copy read, and marks only where none
    is yet.

    The master is the one the phone reads today with our file put first in its
    CONFIG_FILES (fleet.sites.files); what the phone's override files would
    shadow is recorded, and verification fails such a phone with that reason.
    A revert (`restore`: the reverted rollout and its backup marks) writes that
    rollout's backups back instead (None: a file it created, deleted), the
    master first; its own backups let it be rolled back like any push.
    """
    # the thread's publisher of the site's previous push, when it ended well a moment ago (fleet.drivers.publish.kept:
    # one connection and one Digest nonce for a site's pushes, not a fresh pair each)
    with kept_publishers.lent(url, boot_creds) as site_pub:
        pub = ReadOnce(site_pub)   # the master read to render it is the one backed up
        if restore is None:
            prepared = site_files.phone_files(pub, url, mac, params, lambda u: open_publisher(u, boot_creds),
                                              named_master)
            files: dict[str, bytes | None] = dict(prepared.files)
            shadowed = prepared.shadowed()
        else:
            files = rollout_backups.restored(pub, restore[0], mac, restore[1], named_master, others)
            shadowed = ""
        todo = [n for n in files if not state.get(f"backed_up:{n}")]
        publishing = {"shadowed": shadowed, "state": "publishing", **{f"backing_up:{n}": "1" for n in todo}}
        if not rs.set_phone_unless_overtaken(rid, mac, attempt, state.get("state", ""), **publishing):
            return False
        outcome = {}
        for name in todo:
            backup = rollout_backups.backup_name(name, rid)
            # a task redelivered after it began backing up must not take the new file for the old one
            if state.get(f"backing_up:{name}") and pub.read(backup) is not None:
                outcome[f"backed_up:{name}"] = "yes"
                continue
            old = pub.read(name)
            if old is not None and old != files[name]:
                pub.write(backup, old)
            # "same": the file already holds what we render (the master file, mostly): nothing to write or restore
            # (a revert's deletion of a file that is not there is "same" too)
            outcome[f"backed_up:{name}"] = "same" if old == files[name] else ("absent" if old is None else "yes")
        if outcome:
            rs.set_phone_if_absent(rid, mac, **outcome)   # this copy's own outcome still decides what it writes
        marks = {n: outcome.get(f"backed_up:{n}") or state.get(f"backed_up:{n}") for n in files}
        ours = polycom.fleet_file_name(mac)
        # a push writes the master last, a revert first: the phone never reads a master naming a file not there
        for name in sorted(files, key=lambda n: (n != ours) != (restore is not None)):
            content = files[name]
            if marks[name] == "same":
                continue
            if content is None:
                pub.delete(name)
            else:
                pub.write(name, content)
    return True


def _tried(recorded: str | None) -> tuple[str, ...] | None:
    """The reboot methods a lost task announced (`reboot_tried`); None for a record that predates announcing."""
    return None if recorded is None else tuple(m for m in recorded.split(",") if m)


def _resend_may_fall_back(tried: tuple[str, ...] | None) -> bool:
    """Whether a resent reboot may fall back to the web UI when its check-sync is refused. Not after a check-sync
    the lost task sent with no fallback after it: that one may have been accepted and rebooted the phone into files
    that now refuse check-sync (a rollout that turns on NOTIFY validation), where the web UI would reboot it twice;
    a check-sync refused here fails the phone with the reason instead. Not either when nobody recorded what went
    out."""
    return tried is not None and ("check-sync" not in tried or "web" in tried)


def _announcer(rs: RolloutStore, rid: str, mac: str, reboot_at: float, tried: list[str] | None = None) -> phones.Announce:
    """Records each reboot method in the phone's rollout record before it is sent, for a successor that must
    find out whether the reboot went out (confirm_reboot) by the proof that method leaves; `tried` collects them.
    Only while the record still waits on this reboot (`reboot_at`): a sender the driver took for lost must not
    change what its confirmation recorded (that the confirmation's power-on reads)."""
    tried = [] if tried is None else tried

    def announce(method: str) -> None:
        tried.append(method)
        # a power cycle's start, from which the driver waits out the port's off time (policy._reboot_unaccounted)
        cycling = {"power_cycle_at": time.time()} if method == power_fallback.POWER_CYCLE else {}
        rs.set_phone_if_still_rebooting(rid, mac, reboot_at, reboot_tried=",".join(tried), **cycling)
    return announce


def confirm_reboot(rid: str, mac: str, attempt: int, since: float, control: phones.PhoneControl, params: dict,
                   rs: RolloutStore, tried: tuple[str, ...] | None) -> dict:
    """The copy that claimed this reboot is known to be done with it without having recorded it sent (it gave it up
    to the retry policy, or said nothing for the driver's dispatch stall: _may_confirm): send it only if the phone
    never got it.

    `tried`: the reboot methods the lost task announced before sending them
    (None: not recorded, so any the phone may use). Exactly one confirmation
    runs per attempt (its own claim), so a phone is rebooted at most once
    per attempt even when several copies are redelivered. Its errors are
    never retried: the claim is spent, so a retry could only find it taken;
    the phone fails with the reason.
    """
    if not rs.claim_reboot(rid, mac, f"{attempt}-confirm"):
        return {"state": "rebooting", "note": "reboot already being confirmed"}
    if not _still_rebooting(rs.phone(rid, mac), since):
        # the claimer recorded its reboot after the driver asked (a power cycle's long wait): nothing to find out
        return _overtaken(rs, rid, mac, "the reboot's sender recorded it before this confirmation began")
    waits_on = [since]     # the reboot the record waits on: the lost one, then the one sent again
    with _settles_as(rs, rid, mac, "failed", waits_on=waits_on):
        powered_on = False
        if tried and power_fallback.POWER_CYCLE in tried:
            # the lost task may have died with the port off (inside its wait): power first; a port found off was
            # cycled, which is a reboot (the phone boots from its files as it comes back)
            inv, secrets = context()
            site, phone = inv.phone(mac)
            with traced("power on after a lost task"):
                powered_on = power_fallback.ensure_on(site, phone, secrets,
                                                      lambda kind, **fields: rs.log(rid, kind, mac=mac, **fields))
        with traced("state query"):
            rebooted = powered_on or control.rebooted_since(since, params, tried)
        if rebooted:
            # it rebooted at some moment after `since`: where the answer showed when (its uptime, its shutdown
            # event, its port just powered), a registration from before then is not the phone coming back
            seen = time.time() if powered_on else getattr(control, "reboot_seen_at", lambda: None)()
            if not rs.set_phone_if_still_rebooting(rid, mac, since, state="verifying",
                                                   reboot_via="confirmed after a lost task",
                                                   verify_from=max(since, seen or since)):
                return _overtaken(rs, rid, mac, "the phone had rebooted, and its sender recorded it meanwhile")
            return {"state": "verifying", "note": "the phone had rebooted"}
        reboot_at = time.time()
        if not rs.set_phone_if_still_rebooting(rid, mac, since, reboot_at=reboot_at, reboot_tried=""):
            return _overtaken(rs, rid, mac, "no reboot found, but its sender recorded one meanwhile: not sent again")
        waits_on[0] = reboot_at
        sent: list[str] = []
        with traced("reboot"):
            how = control.reboot(_announcer(rs, rid, mac, reboot_at, sent), fallback=_resend_may_fall_back(tried))
        if not rs.set_phone_if_still_rebooting(rid, mac, reboot_at, state="verifying",
                                               reboot_via=how + ", resent after a lost task",
                                               verify_from=_reboot_left(control, reboot_at),
                                               **_may_stay_up(control, sent, params)):
            return _overtaken(rs, rid, mac, f"reboot resent ({how}), but the record moved on meanwhile")
        return {"state": "verifying", "reboot_at": reboot_at}


def _still_rebooting(record: dict, reboot_at: float) -> bool:
    """The phone's record still waits on the reboot recorded at `reboot_at` (no one has said how it went)."""
    return record.get("state") == "rebooting" and float(record.get("reboot_at") or 0) == float(reboot_at)


def rollback(rid: str, mac: str, retry_on: Retryable = ()) -> dict:
    """Put the phone's previous files back and reboot it; the controller verifies it re-registers.

    Writing the files back may be retried (it writes the same bytes again);
    the reboot is not: once `rollback_at` is recorded a retry would find the
    rollback sent and stop, so a reboot that fails settles the phone.
    """
    with _journal(rid, mac):
        return _rollback(rid, mac, retry_on)


def _rollback(rid: str, mac: str, retry_on: Retryable) -> dict:
    inv, secrets, store, rs, state, plan = _record(rid, mac, "rollback_failed")
    site, phone = plan.site, plan.phone
    if state.get("rollback_at"):
        return {"state": state.get("state"), "note": "rollback already sent"}
    with _settles_as(rs, rid, mac, "rollback_failed", retry_on), traced("publish", files="backups"):
        pub = open_publisher(site.boot_server.url, _boot_credentials(secrets, site))
        named = site.boot_server.master_file or ""
        try:
            for name, value in plan.backups.items():   # only the renderer's names for this MAC
                if value == "same" or name == named:
                    continue
                if value == "absent":
                    pub.delete(name)
                else:
                    old = pub.read(rollout_backups.backup_name(name, rid))
                    if old is None:
                        raise DriverError(pub.name, f"backup of {name} is missing")
                    pub.write(name, old)
            if named in plan.backups:
                _restore_shared_master(pub, rid, mac, named, site, rs)
        finally:
            pub.close()
    with _settles_as(rs, rid, mac, "rollback_failed"):
        rollback_at = time.time()
        rs.set_phone(rid, mac, state="rolling_back", rollback_at=rollback_at)
        if power_fallback.POWER_CYCLE in (_tried(state.get("reboot_tried")) or ()):
            # a push that died inside its power cycle may have left the port off: power before the reboot
            with traced("power on before the rollback"):
                power_fallback.ensure_on(site, phone, secrets, lambda kind, **fields: rs.log(rid, kind, mac=mac, **fields))
        control = phones.for_phone(phone, secrets.credentials(phone.credentials), inv, secrets, store)
        with traced("reboot"):
            control.reboot()
        rs.set_phone(rid, mac, rollback_verify_from=_reboot_left(control, rollback_at))
    return {"state": "rolling_back"}


def _restore_shared_master(pub, rid: str, mac: str, named: str, site: inv_mod.Site, rs: RolloutStore) -> None:
    """Put the site's named master back as this rollout found it, once no phone of the site has a fleet file left.

    The master named in the boot-server address is read by every phone that
    names it: while another phone still has its fleet file there, the master
    keeps the `[PHONE_MAC_ADDRESS]-fleet.cfg` entry that phone needs, and the
    last phone rolled back writes the backup (made by whichever phone of this
    rollout changed the file first) back byte for byte.
    """
    still = [p.mac for p in site.phones if pub.read(polycom.fleet_file_name(p.mac)) is not None]
    if still:
        rs.log(rid, "shared_master_kept", mac=mac, file=named,
               reason=f"{plural(len(still), 'phone')} of site {site.name} still {'has' if len(still) == 1 else 'have'} "
                      f"a fleet file: {', '.join(still[:5])}")
        return
    old = pub.read(rollout_backups.backup_name(named, rid))
    if old is not None:
        pub.write(named, old)
        rs.log(rid, "shared_master_restored", mac=mac, file=named)


def cleanup(rid: str, site_name: str, retry_on: Retryable = ()) -> dict:
    """Delete a finished rollout's `<file>.before-<id>` backups on the site's boot server: they may hold SIP passwords.

    A failure is logged in the rollout's history (unless it is about to be retried) and raised.
    """
    inv, secrets = context()
    _, rs = stores()
    meta = rs.get(rid)
    if not meta or meta.get("status") not in FINISHED:
        raise TaskFailed(f"rollout {rid[:80]!r} is not finished: its backups stay")
    try:
        site = inv.site(site_name)
        mine = {p.mac for p in site.phones}
        macs = [p["mac"] for p in meta["plan"]["phones"] if p.get("mac") in mine]
        pub = open_publisher(site.boot_server.url, _boot_credentials(secrets, site))
        try:
            removed, kept = rollout_backups.remove(pub, rid, rs.phones(rid, macs, full=True),
                                                   site.boot_server.master_file or "")
        finally:
            pub.close()
    except retry_on:
        raise
    except (DriverError, KeyError, ValueError) as exc:
        rs.log(rid, "backups_removal_failed", site=site_name, error=failure_text(exc)[:300])
        raise TaskFailed(f"rollout {rid}: backups on site {site_name} not removed: {failure_text(exc)[:300]}") from None
    rs.set(rid, **{f"backups_removed:{site_name}": time.time()})
    rs.log(rid, "backups_removed", site=site_name, files=removed, kept_for_failed_rollback=kept)
    return {"removed": removed, "kept": kept}
