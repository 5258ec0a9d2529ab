"""What a rollout does next, decided from its phones' states alone: a pure transition function.

The driver (fleet.rollout.driver) reads the phones' rollout records and the
collectors' observations, hands them here with the rollout's limits and the
time, and carries out what comes back: write a phone's record, send a task,
log an event, or end the wave. Nothing here does I/O or reads a clock, so each
decision (budget exactly spent, a canary that failed, a phone deferred because
it may be in a call when the deadline passes, a reboot claim whose task was
lost) is a unit test rather than a lab run.

A phone's rollout states, and who moves it:

    pending ──driver──> dispatched ──task──> publishing ──task──> rebooting ──task──> verifying
    deferred (the task found it possibly in a call) ──driver, after DEFER_RETRY_S──> dispatched
    verifying ──driver: registered to the required servers since the reboot──> verified
        (a check-sync with alwaysReboot=0 may apply the files without a reboot: the registration since the push
        verifies it all the same, and `applied` says whether a reboot was seen)
    verifying/rebooting ──driver: not registered within verify.within──> rolling_back (or failed)
    rolling_back ──driver: server 1 registered since the rollback──> rolled_back, else rollback_failed
    skipped (nothing to change) and failed are set by the task.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Mapping

from fleet.base.words import servers as servers_named
from soundpoint.values import plural

IN_FLIGHT = ("dispatched", "publishing", "rebooting", "verifying", "rolling_back")
# settled states a phone may still be rebooting in, by the field that says when its reboot went out (unavailable)
SENT_AND_FAILED = {"failed": "reboot_at", "rollback_failed": "rollback_at"}
FAILED = ("failed", "rolled_back", "rollback_failed")
SETTLED = ("verified", "skipped", "failed", "rolled_back", "rollback_failed")
# rollout outcomes after which nothing can resume or roll back a phone of that run: its boot-server backups may go
FINISHED = ("done", "aborted")
# a phone being rolled back counts against the budget already: its failure is known, only the repair is not
COUNTS_AS_FAILED = FAILED + ("rolling_back",)
DEFER_RETRY_S = 5.0
DISPATCH_STALL_S = 60.0
# a reboot whose sender gave it up to the retry policy (no answer in time) is found out this long after: a phone
# that took the request late may still be on its way down, and one found "not rebooted" sooner got a second reboot
ABANDONED_REBOOT_GRACE_S = 20.0
# the reboot method name a power cycle is announced by (reboot_tried; fleet.rollout.power_fallback)
POWER_CYCLE = "power-cycle"
# a power cycle's switch work around its off time (set the port off, read it back; on, read back): a sender is
# taken for lost only this long after its port's off time has run out (the announcement stamps power_cycle_at)
POWER_CYCLE_MARGIN_S = 15.0
# evidence stamped when the collector received it (syslog, events, bindings: no `sent`) counts for a reboot only
# this long after the worker read the reboot's answer: the two stamps come from two processes, and a refresh report
# the phone sent just before it took the reboot reached the collector after the worker's stamp (two suites side by
# side: a phone "verified" 0.02 s before it went down, one more down than max_unavailable), unless the phone's own
# shutdown event came between (policy.registered). A real phone boots in tens of seconds; the lab's in a third of one.
RECEIVED_SKEW_S = 0.25

# what the driver does with a phone
PUSH = "push"                        # first dispatch (or again after a deferral): send rollout_push
RESEND = "resend"                    # dispatched but no sign of its task: send rollout_push again
CONFIRM_REBOOT = "confirm_reboot"    # the reboot was claimed, never confirmed sent: a push task finds out
VERIFIED = "verified"
FAIL = "fail"                        # not registered in time; rolled back when the playbook says so
ROLLED_BACK = "rolled_back"
ROLLBACK_FAILED = "rollback_failed"

# what the driver does with the wave
CONTINUE = "continue"
WAVE_DONE = "wave_done"
HALT = "halt"
ABORT = "abort"

PhoneStates = Mapping[str, Mapping[str, str]]          # MAC -> the phone's rollout record (strings, as in Redis)
Observed = Mapping[str, Mapping[int, Mapping]]         # MAC -> server index -> {"state", "t", ...} (fleet.state.observe)


@dataclass(frozen=True)
class Limits:
    """Everything about a rollout the decisions depend on, from its plan and playbook."""
    site_of: Mapping[str, str]
    max_unavailable: Mapping[str, int]         # per site: phones between dispatch and settling, across waves
    budget_total: int                          # failed phones tolerated; one more halts the rollout
    budget_per_site: Mapping[str, int] | None
    verify_within: float                       # seconds after the reboot (or the rollback) to register
    registered_to: tuple[int, ...] = (1,)
    rollback: bool = True
    # per phone: fallbacks it may register with only once server 1 fails (PhonePlan.on_failure_fallbacks)
    on_failure_fallbacks: Mapping[str, tuple[int, ...]] = field(default_factory=dict)
    # per phone: those of them whose address or port the push changes (PhonePlan.moved_fallbacks): never silent
    moved_fallbacks: Mapping[str, tuple[int, ...]] = field(default_factory=dict)
    progress_deadline: float = 600.0
    dispatch_stall: float = DISPATCH_STALL_S
    defer_retry: float = DEFER_RETRY_S
    power_off_s: float = 0.0                   # strategy.power_off_s when power_cycle_fallback is on, else 0

    @cached_property
    def sites(self) -> tuple[str, ...]:
        """The rollout's sites, sorted (worked out once: every pass counts per site)."""
        return tuple(sorted(set(self.site_of.values())))

    @property
    def settle_within(self) -> float:
        """How long a halted wave waits for phones already rebooting to be verified, failed or rolled back."""
        return self.verify_within * 2 + 30

    @classmethod
    def of(cls, plan: Mapping, playbook, budget_total: int | None = None,
           dispatch_stall: float = DISPATCH_STALL_S) -> Limits:
        """From a stored plan (Plan.to_dict) and its RolloutPlaybook; `budget_total` overrides the plan's."""
        return cls(site_of={p["mac"]: p["site"] for p in plan["phones"]},
                   max_unavailable={s: int(n) for s, n in plan["max_unavailable"].items()},
                   budget_total=int(plan["budget_total"] if budget_total is None else budget_total),
                   budget_per_site=({s: int(n) for s, n in plan["budget_per_site"].items()}
                                    if plan.get("budget_per_site") else None),
                   verify_within=float(playbook.verify.within), registered_to=tuple(playbook.verify.registered_to),
                   rollback=bool(playbook.rollback), progress_deadline=float(playbook.strategy.progress_deadline),
                   dispatch_stall=dispatch_stall,
                   power_off_s=(float(playbook.strategy.power_off_s) if playbook.strategy.power_cycle_fallback else 0.0),
                   on_failure_fallbacks={p["mac"]: tuple(p.get("on_failure_fallbacks") or ()) for p in plan["phones"]},
                   moved_fallbacks={p["mac"]: tuple(p.get("moved_fallbacks") or ()) for p in plan["phones"]})


@dataclass(frozen=True)
class Action:
    """One thing to do to one phone: write `fields` to its record, then send `task` (if any), then log `event`."""
    kind: str
    mac: str
    fields: dict = field(default_factory=dict)
    task: str | None = None                 # "push" or "rollback"
    attempt: int = 1
    event: dict | None = None               # {"kind": ..., ...} for the rollout's event log


@dataclass
class Step:
    """The decisions of one pass over a wave.

    `actions` (verification, rollback, re-sends) are carried out first; then,
    unless the wave ends (`verdict` is not CONTINUE), the `dispatch` ones.
    """
    actions: list[Action] = field(default_factory=list)
    dispatch: list[Action] = field(default_factory=list)
    verdict: str = CONTINUE
    reason: str = ""


# ---------------------------------------------------------------- helpers
def _f(st: Mapping[str, str], name: str, default: float = 0.0) -> float:
    value = st.get(name)
    return float(value) if value not in (None, "") else default


def _attempt(st: Mapping[str, str]) -> int:
    return int(st.get("attempt", 1) or 1)


def registered(servers: Mapping[int, Mapping], required: tuple[int, ...] | list[int], since: float,
               on_failure: tuple[int, ...] | list[int] = (), moved: tuple[int, ...] | list[int] = (),
               down_at: float | None = None) -> bool:
    """Every required server reports the phone registered, by an observation newer than `since`.

    A fallback in `on_failure` (UC Software, failOver.reRegisterOn=1) may instead be silent: a phone that reads
    the switch as "register with server 2 when server 1 fails" sends it nothing while server 1 works. What tells
    that apart from a fallback that is broken is the evidence since the reboot: server 1 registered, and nothing
    at all of the fallback (a phone that tried it and failed shows that failure, and is not verified). And only
    when the push left the fallback where it was (not in `moved`): a new address the phone never registered
    with may be wrong, and REGISTERs to a wrong address time out unseen (the wire evidence attributes them by
    the addresses it knows), so silence there is no evidence; such a phone is "fallback unverified".

    Where the source knows when the phone sent the REGISTER a registration answers (wire, HEP: `sent`), that
    must be after `since` too. A refresh sent just before the reboot went out is answered after it; counted, it
    verified a phone still on its way down, and the rollout took one more phone of the site down than
    max_unavailable allows. (Not the phone's shutdown event as the line: the collector stamps that when it
    receives it, on another clock than the capture's, and a phone quick to boot registers "before" it.) Where
    only the collector's receipt is known (syslog, events), the receipt must be RECEIVED_SKEW_S after `since`,
    or after the phone's shutdown event for this reboot (`down_at`, received by the same collector within that
    skew of `since`): a phone reports its refreshes before it takes the reboot, and its shutdown after."""
    def fresh(t: float) -> bool:
        return t > since + RECEIVED_SKEW_S or (down_at is not None and since - RECEIVED_SKEW_S < down_at < t)

    def up(i: int) -> bool:
        s = servers.get(i, {})
        sent = s.get("sent")
        return (s.get("state") == "registered" and s.get("t", 0) > since
                and (sent > since if sent is not None else fresh(s.get("t", 0))))

    def silent_standby(i: int) -> bool:
        return i in on_failure and i not in moved and up(1) and servers.get(i, {}).get("t", 0) <= since

    return all(up(i) or silent_standby(i) for i in required)


def _unverified_fallback(servers: Mapping[int, Mapping], limits: Limits, mac: str, since: float) -> str:
    """Why a failure may be only a fallback that could not be proven: the on-failure fallbacks the push moved
    and nothing was heard of since (fallback unverified), with what would prove them; "" otherwise."""
    unseen = [i for i in limits.moved_fallbacks.get(mac, ()) if i in limits.registered_to
              and servers.get(i, {}).get("t", 0) <= since]
    if not unseen:
        return ""
    return (f"; fallback unverified: {servers_named(unseen)} got a new address or port in this push and nothing has "
            "been seen of them since; with failOver.reRegisterOn=1 the phone may register there only once server 1 "
            "fails (run the WAN-outage experiment, or verify registered_to without them)")


def to_observe(states: PhoneStates, recheck: set[str]) -> list[str]:
    """The phones whose observations are worth reading this pass: something changed and they wait for one."""
    return [m for m in recheck if states.get(m, {}).get("state") in ("verifying", "rolling_back")]


def wave_settled(macs: list[str], states: PhoneStates) -> bool:
    # from the end: phones settle in plan order, so an unsettled one is found at once rather than after all the rest
    return all(states.get(m, {}).get("state") in SETTLED for m in reversed(macs))


def in_flight(macs: list[str], states: PhoneStates) -> list[str]:
    return [m for m in macs if states.get(m, {}).get("state") in IN_FLIGHT]


def drill_due(wave: int, canary: int, drill: str | None) -> bool:
    """The failover drill gate runs once, after the canary wave, when the playbook has both."""
    return wave == 0 and bool(canary) and bool(drill)


def _apply(view: dict[str, dict], action: Action) -> None:
    """The action's fields into `view`, copy on write: the caller's records (shared with `view`) stay untouched."""
    if action.fields:
        view[action.mac] = {**view.get(action.mac, {}), **{k: str(v) for k, v in action.fields.items()}}


# ---------------------------------------------------------------- per phone
def evidence_from(st: Mapping[str, str], at: str, answered: str, now: float, wait: float) -> float | None:
    """From when a registration proves the phone came back from the reboot recorded at `at`; None: not yet.

    Not the moment the reboot was recorded (`at`, stamped before it is sent): a phone whose reboot waits on
    its REST lock, a digest challenge or a slow worker is still up, and a refresh it makes (or a lineInfo it
    answers) in that time said "registered" after `at`. Counted, it verified a phone on its way down and the
    rollout took one more phone of the site down than max_unavailable allows (tests/test_rollout_faults.py,
    under two suites' load). So: from when the phone's answer to the reboot arrived (a phone answers, then
    goes down: `answered`, fleet.rollout.work._reboot_left). Where
    that was never recorded, `at` once `wait` seconds have passed since it: a push records both together
    (wait 0: only a record from before this field lacks it); a rollback records `answered` after its reboot,
    so the wait (the dispatch stall) covers the reboot in flight, and a task that died sending it."""
    if st.get(answered):
        return max(_f(st, answered), _f(st, at))
    return _f(st, at) if now - _f(st, at) >= wait else None


def given_up_at(st: Mapping[str, str], since: float) -> float | None:
    """When the sender of the reboot claimed at `since` gave it up to the retry policy (`reboot_abandoned`); None
    when it did not (a mark older than `since` belongs to an earlier reboot of the phone)."""
    abandoned = _f(st, "reboot_abandoned")
    return abandoned if abandoned >= since else None


def _reboot_unaccounted(st: Mapping[str, str], since: float, limits: Limits, now: float) -> bool:
    """A reboot claimed at `since` whose sender is taken for done with it without word (time a new task found out):
    - given up to the retry policy (`reboot_abandoned`): ABANDONED_REBOOT_GRACE_S after that, whatever the stall
      says (a sender that gave up after a long lock wait did so near the stall's end, and a confirmation 2 s later
      met a phone that took the reboot late still up: a second reboot); again only a stall after a confirmation
      sent since;
    - else silent past the dispatch stall, and, once it announced a power cycle (`power_cycle_at`), past the port's
      off time from then plus POWER_CYCLE_MARGIN_S (a confirmation powers the port: it cut the user's off time
      short while the sender still waited in it); never twice within a stall."""
    confirm = _f(st, "confirm_sent")
    abandoned = given_up_at(st, since)
    if abandoned is not None:
        return now - confirm > limits.dispatch_stall if confirm >= abandoned else now - abandoned >= ABANDONED_REBOOT_GRACE_S
    if now - confirm <= limits.dispatch_stall or now - since <= limits.dispatch_stall:
        return False
    cycle_at = _f(st, "power_cycle_at")
    return cycle_at < since or now - cycle_at > limits.power_off_s + POWER_CYCLE_MARGIN_S


def _evidence_named(servers: Mapping[int, Mapping], required: tuple[int, ...] | list[int]) -> str:
    """What a verification rested on, for the phone's record: each required server's source and times."""
    def one(i: int) -> str:
        e = servers.get(i, {})
        sent = f" sent {float(e['sent']):.3f}" if e.get("sent") is not None else ""
        return f"server {i}: {e.get('state', '?')} by {e.get('source', '?')} at {float(e.get('t', 0)):.3f}{sent}"
    return "; ".join(one(i) for i in required)[:300]


def applied_how(st: Mapping[str, str], down_at: float | None, since: float) -> str:
    """For a verified phone the push may not have rebooted (`reboot_optional`: check-sync, alwaysReboot=0): how
    its files took effect, from the evidence. A shutdown event after the push: after a reboot; none from a phone
    that sends them: without a reboot; a phone that sends none: not observable. "" for every other phone."""
    if st.get("reboot_optional") != "1":
        return ""
    if down_at is not None and down_at > since:
        return "after a reboot"
    if st.get("reports_shutdown") == "1":
        return "without a reboot"
    return "with or without a reboot (not observable: the phone sends no shutdown event)"


def advance(states: PhoneStates, observed: Observed, limits: Limits, now: float,
            downs: Mapping[str, float] | None = None) -> list[Action]:
    """Verification, rollback and re-send decisions for phones already dispatched.

    `observed` holds the collectors' view of the phones worth looking at this
    pass (to_observe); a phone not in it is judged by its clocks only, so it is
    never verified on stale evidence. `downs`: each phone's last shutdown event
    (line unregistration), which tells a phone verified after a check-sync
    that need not reboot it whether it did.
    """
    out: list[Action] = []
    for mac, st in states.items():
        state = st.get("state")
        if state in ("dispatched", "publishing"):
            if now - _f(st, "dispatched_at", now) > limits.dispatch_stall:
                # the task was lost with its worker before it did anything visible: send it again
                out.append(Action(RESEND, mac, {"dispatched_at": now}, "push", _attempt(st)))
        elif state in ("verifying", "rebooting") and st.get("reboot_at"):
            # "rebooting": the reboot was claimed but not known to be sent, so no registration proves it
            since = _f(st, "reboot_at")
            moved = limits.moved_fallbacks.get(mac, ())
            proof_from = evidence_from(st, "reboot_at", "verify_from", now, 0.0)
            up = state == "verifying" and mac in observed and proof_from is not None and registered(
                observed[mac], limits.registered_to, proof_from, limits.on_failure_fallbacks.get(mac, ()), moved,
                (downs or {}).get(mac))
            shadowed = st.get("shadowed", "") if up else ""   # fleet.sites.overrides: an override file beat a pushed value
            if up and not shadowed:
                took = round(now - since, 2)
                how = applied_how(st, (downs or {}).get(mac), since)
                standby = [i for i in limits.registered_to
                           if observed[mac].get(i, {}).get("t", 0) <= proof_from]   # held as on-failure fallbacks
                fields = {"state": "verified", "settled_at": now, "verified_in": took, "verified_by": _evidence_named(
                    observed[mac], limits.registered_to), **({"applied": how} if how else {})}
                event = {"kind": "verified", "mac": mac, "seconds": took, **({"applied": how} if how else {})}
                if standby:
                    note = (f"{servers_named(standby)} not registered: failOver.reRegisterOn=1 "
                            f"{'fallback' if len(standby) == 1 else 'fallbacks'} this phone uses only once server 1 fails")
                    fields["verified_note"] = event["note"] = note
                out.append(Action(VERIFIED, mac, fields, event=event))
            elif state == "rebooting" and _reboot_unaccounted(st, since, limits, now):
                # the task claimed the reboot and vanished before saying it went out: a new one finds out and finishes
                out.append(Action(CONFIRM_REBOOT, mac, {"confirm_sent": now}, "push", _attempt(st)))
            elif shadowed or now - since > limits.verify_within:
                reason = shadowed or (f"not registered to {servers_named(limits.registered_to)} within "
                                      f"{limits.verify_within:g}s of the reboot") + _unverified_fallback(
                                          observed.get(mac, {}), limits, mac, proof_from or since)
                event = {"kind": "failed", "mac": mac, "reason": reason}
                if limits.rollback:
                    out.append(Action(FAIL, mac, {"state": "rolling_back", "error": reason, "rollback_requested": now},
                                      "rollback", _attempt(st), event))
                else:
                    out.append(Action(FAIL, mac, {"state": "failed", "error": reason, "settled_at": now},
                                      None, _attempt(st), event))
        elif state == "rolling_back" and st.get("rollback_at"):
            since = _f(st, "rollback_at")
            proof_from = evidence_from(st, "rollback_at", "rollback_verify_from", now, limits.dispatch_stall)
            if mac in observed and proof_from is not None and registered(observed[mac], (1,), proof_from,
                                                                         down_at=(downs or {}).get(mac)):
                out.append(Action(ROLLED_BACK, mac, {"state": "rolled_back", "settled_at": now},
                                  event={"kind": "rolled_back", "mac": mac}))
            elif now - since > limits.verify_within:
                error = (st.get("error", "") + "; the rolled-back phone did not re-register")[:300]
                out.append(Action(ROLLBACK_FAILED, mac, {"state": "rollback_failed", "settled_at": now, "error": error},
                                  event={"kind": "rollback_failed", "mac": mac}))
    return out


def unavailable(snapshot: PhoneStates, limits: Limits, now: float) -> dict[str, int]:
    """Phones of each site between dispatch and settling, across all waves; and phones that failed once their
    reboot (or the rollback's) may have gone out, until verify.within has passed since it: a reboot whose
    answer timed out or was cut may well have reached the phone, which is then down as much as any other."""
    counts = dict.fromkeys(limits.sites, 0)
    for mac, st in snapshot.items():
        state = st.get("state")
        if state in IN_FLIGHT or (state in SENT_AND_FAILED and now - _f(st, SENT_AND_FAILED[state]) < limits.verify_within):
            counts[limits.site_of[mac]] += 1
    return counts


def dispatch(macs: list[str], snapshot: PhoneStates, limits: Limits, now: float) -> list[Action]:
    """Phones of the wave (`macs`, in plan order) to send now: pending ones, and deferred ones whose retry time came,
    within max_unavailable."""
    busy = unavailable(snapshot, limits, now)
    open_sites = sum(1 for s, n in busy.items() if n < limits.max_unavailable[s])
    out: list[Action] = []
    for mac in macs:
        if not open_sites:
            break          # every site is at its limit: nothing further down the wave can go (a big wave, every pass)
        st = snapshot[mac]
        state = st.get("state")
        ready = state == "pending" or (state == "deferred" and now - _f(st, "deferred_at") > limits.defer_retry)
        site = limits.site_of[mac]
        if not ready or busy[site] >= limits.max_unavailable[site]:
            continue
        busy[site] += 1
        open_sites -= busy[site] == limits.max_unavailable[site]
        out.append(Action(PUSH, mac, {"state": "dispatched", "dispatched_at": now}, "push", _attempt(st)))
    return out


# ---------------------------------------------------------------- per wave
def budget_spent(snapshot: PhoneStates, limits: Limits) -> str:
    """Why the failure budget is spent (more failed phones than it allows, overall or on one site), or ""."""
    failed = [m for m, st in snapshot.items() if st.get("state") in COUNTS_AS_FAILED]
    if len(failed) > limits.budget_total:
        return f"failure budget spent: {plural(len(failed), 'phone')} failed (budget {limits.budget_total})"
    for site, limit in (limits.budget_per_site or {}).items():
        n = sum(1 for m in failed if limits.site_of[m] == site)
        if n > int(limit):
            return f"failure budget of site {site} spent: {plural(n, 'phone')} failed (budget {limit})"
    return ""


def _waiting_on(macs: list[str], states: PhoneStates) -> str:
    """The unsettled phones of a wave by state, deferred ones named: what a missed deadline was waiting for."""
    by_state: dict[str, list[str]] = {}
    for m in macs:
        state = states.get(m, {}).get("state", "?")
        if state not in SETTLED:
            by_state.setdefault(state, []).append(m)
    parts = []
    for state in sorted(by_state):
        phones = by_state[state]
        if state != "deferred":
            parts.append(f"{len(phones)} {state}")
            continue
        calls = [m for m in phones if why_deferred(states.get(m, {}).get("deferred_reason")).startswith("in a call")]
        unknown = [m for m in phones if m not in calls]
        if calls:
            parts.append(f"{len(calls)} deferred in a call ({', '.join(calls[:5])}" + (", ..." if len(calls) > 5 else "") + ")")
        if unknown:
            named = [f"{m}: {why_deferred(states.get(m, {}).get('deferred_reason'))[:120]}" for m in unknown[:5]]
            parts.append(f"{len(unknown)} deferred ({'; '.join(named)}" + ("; ..." if len(unknown) > 5 else "") + ")")
    return ", ".join(parts)


def why_deferred(reason: str | None) -> str:
    """Why a deferred phone waits, from its record's `deferred_reason` ("<call state>: <why>"): "in a call (...)"
    or "state unknown: <why>"; a record without one (an older rollout) says what is known."""
    state, _, why = str(reason or "").partition(": ")
    if state == "in-call":
        return f"in a call ({why})" if why else "in a call"
    if state == "unknown":
        return f"state unknown: {why or 'no reason recorded'}"
    return "possibly in a call (no reason recorded)"


def step(wave: int, macs: list[str], snapshot: PhoneStates, observed: Observed, limits: Limits, now: float,
         deadline_passed: bool = False, abort: bool = False, downs: Mapping[str, float] | None = None) -> Step:
    """One pass over a wave: the phones' next actions and whether the wave goes on, is done, or ends the rollout.

    `snapshot` holds every phone of the rollout (budgets and max_unavailable
    count across waves); `macs` are the wave's. Later decisions of the pass see
    the earlier ones' effects (a phone verified frees its site's slot), as the
    driver mirrors each write in its snapshot.
    """
    if abort:
        return Step(verdict=ABORT, reason="aborted by request")
    # a shallow copy: actions replace a phone's record in it (_apply), never change the caller's (O(N) pointer
    # copies, not a copy of every record: a pass over a 10,000-phone rollout runs many times a second)
    view = dict(snapshot)
    for m in macs:
        view.setdefault(m, {})
    # only phones in flight have a next step to decide (advance looks at no other state)
    actions = advance({m: view[m] for m in macs if view[m].get("state") in IN_FLIGHT}, observed, limits, now, downs)
    for a in actions:
        _apply(view, a)
    spent = budget_spent(view, limits)
    if spent:
        return Step(actions, verdict=HALT, reason=spent)
    if wave_settled(macs, view):
        return Step(actions, verdict=WAVE_DONE)
    if deadline_passed:
        return Step(actions, verdict=HALT, reason=f"wave {wave} missed its progress deadline "
                                                  f"({limits.progress_deadline:g}s); waiting on {_waiting_on(macs, view)}")
    return Step(actions, dispatch(macs, view, limits, now))


def settle(macs: list[str], states: PhoneStates, observed: Observed, limits: Limits, now: float,
           downs: Mapping[str, float] | None = None) -> tuple[list[Action], bool]:
    """A wave that ends sends no more work: (what to do for phones already rebooting, whether none is in flight now)."""
    view = {m: dict(states.get(m, {})) for m in macs}
    actions = advance(view, observed, limits, now, downs)
    for a in actions:
        _apply(view, a)
    return actions, not in_flight(macs, view)
