"""Driving a rollout: waves, canaries, max unavailable per site, a failure budget, rollback, resume.

Everything the driver knows is in Redis (fleet.store.RolloutStore), so
`fleet rollout resume ID` in any process continues exactly where a halted or
crashed run stopped. Per-phone work (render, publish, reboot; rollback) is a
short Celery task on the site's queue; verification is read from the store,
fed by the site's collectors, so no worker slot waits on a rebooting phone.
A phone counts as unavailable from the moment it is sent to be rebooted until
it is verified (or settled otherwise), and no site ever has more than its
`max_unavailable` such phones.
"""
from __future__ import annotations

import os
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Callable

from .celeryapp import app as celery_app
from .celeryapp import site_queue
from .inventory import Inventory
from .rollout_playbook import RolloutPlaybook
from .store import RolloutStore, Store

IN_FLIGHT = ("dispatched", "publishing", "rebooting", "verifying", "rolling_back")
FAILED = ("failed", "rolled_back", "rollback_failed")
# outcomes after which nothing can resume or roll back a phone of this run: its boot-server backups may go
FINISHED = ("done", "aborted")
DEFER_RETRY_S = 5.0
# a dispatched task that shows no progress this long is sent again (its worker died with it)
DISPATCH_STALL_S = float(os.environ.get("FLEET_DISPATCH_STALL", "60"))
# how often a running wave re-reads every phone in full, beside the change feeds
FULL_READ_S = 5.0
MIN_PASS_S = 0.02


def new_id(name: str) -> str:
    return time.strftime("%Y%m%d-%H%M%S-") + name[:20] + "-" + uuid.uuid4().hex[:4]


@dataclass
class Outcome:
    status: str
    reason: str
    counts: dict


class RolloutDriver:
    def __init__(self, rid: str, inventory: Inventory, store: Store, playbook: RolloutPlaybook,
                 say: Callable[[str], None] = lambda s: None, progress: Callable[[dict], None] = lambda c: None,
                 poll: float = 0.1, drill: Callable[[str, str, str], bool] | None = None) -> None:
        self.rid, self.inv, self.store, self.pb = rid, inventory, store, playbook
        self.rs = RolloutStore(store)
        self.say, self.progress, self.poll = say, progress, poll
        self.drill = drill
        meta = self.rs.get(rid)
        self.plan = meta["plan"]
        self.site_of = {p["mac"]: p["site"] for p in self.plan["phones"]}
        self._entries = {p["mac"]: p for p in self.plan["phones"]}
        self._phone_states: dict = {}
        self.required = self.pb.verify.registered_to
        self._stop = threading.Event()
        self.budget_total = int(meta.get("budget_override") or self.plan["budget_total"])

    # ---------------------------------------------------------------- leases
    def _sites(self) -> list[str]:
        return sorted(set(self.site_of.values()))

    def _renew(self) -> None:
        while not self._stop.wait(5):
            for s in self._sites():
                self.store.renew_lease(s, f"rollout:{self.rid}")

    # ---------------------------------------------------------------- main loop
    def run(self) -> Outcome:
        holder = f"rollout:{self.rid}"
        taken = []
        try:
            for s in self._sites():
                self.store.acquire_lease(s, holder)
                taken.append(s)
        except Exception:
            for s in taken:
                self.store.release_lease(s, holder)
            raise
        renewer = threading.Thread(target=self._renew, daemon=True)
        renewer.start()
        self.rs.set(self.rid, status="running", reason="")
        self.rs.log(self.rid, "run", pid=threading.get_native_id())
        try:
            outcome = self._drive()
        except KeyboardInterrupt:
            outcome = Outcome("halted", "interrupted (Ctrl-C); `fleet rollout resume` continues", self.counts())
        finally:
            self._stop.set()
            for s in taken:
                self.store.release_lease(s, holder)
        self.rs.set(self.rid, status=outcome.status, reason=outcome.reason, finished=time.time())
        self.rs.log(self.rid, "end", status=outcome.status, reason=outcome.reason, counts=outcome.counts)
        self._remove_backups(outcome)
        return outcome

    def _remove_backups(self, outcome: Outcome) -> None:
        """Have each site's worker delete this run's `<file>.before-<id>` backups: they may hold SIP passwords.

        Only once the run is finished (done, or aborted with no phone still in
        flight): a halted run can be resumed and its phones rolled back, which
        needs them. `keep_backups: true` in the playbook keeps them.
        """
        if outcome.status not in FINISHED or self.pb.keep_backups:
            return
        busy = [m for m, st in self.rs.phones(self.rid, list(self.site_of)).items() if st.get("state") in IN_FLIGHT]
        if busy:
            self.rs.log(self.rid, "backups_kept", reason=f"{len(busy)} phones still in flight", phones=busy[:20])
            return
        for site in self._sites():
            celery_app.send_task("fleet.rollout_cleanup", args=[self.rid, site], queue=site_queue(site), ignore_result=True)
        self.rs.log(self.rid, "backups_removal_sent", sites=self._sites())

    def _drive(self) -> Outcome:
        for wave, macs in enumerate(self.plan["waves"]):
            states = self.rs.phones(self.rid, macs)
            if all(s.get("state") in self.rs.SETTLED for s in states.values()):
                continue
            self.say(f"wave {wave}: {len(macs)} phones" + (" (canaries)" if wave == 0 and self.pb.strategy.canary else ""))
            self.rs.log(self.rid, "wave", wave=wave, phones=len(macs))
            halted = self._run_wave(wave, macs)
            if halted:
                return halted
            if wave == 0 and self.pb.strategy.canary and self.pb.drill and self.drill is not None:
                canary_site = self.site_of[macs[0]]
                self.say(f"failover drill on canary site {canary_site}: {self.pb.drill}")
                try:
                    ok = self.drill(self.pb.drill, canary_site, f"rollout:{self.rid}")
                except Exception as exc:  # a drill that cannot run (bad playbook, no router) fails the gate, with why
                    self.rs.log(self.rid, "drill", site=canary_site, passed=False, error=str(exc)[:300])
                    return Outcome("halted", f"failover drill could not run on {canary_site}: {exc}"[:300], self.counts())
                self.rs.log(self.rid, "drill", site=canary_site, passed=ok)
                if not ok:
                    return Outcome("halted", f"failover drill {self.pb.drill} failed on canary site {canary_site}", self.counts())
        return Outcome("done", "", self.counts())

    def _run_wave(self, wave: int, macs: list[str]) -> Outcome | None:
        """One wave, driven from an in-memory snapshot of every phone's rollout state.

        The snapshot is kept current by the rollout's change feed (tasks' state
        changes) and the collectors' observation feed, so a pass reads only the
        phones something happened to; a full read every FULL_READ_S seconds is
        the safety net for anything a feed lost (a trimmed stream, a Redis restart).
        """
        deadline = time.monotonic() + self.pb.strategy.progress_deadline
        everyone = list(self.site_of)
        wave_set = set(macs)
        positions = self.rs.feed_positions(self.rid)
        snapshot = self.rs.phones(self.rid, everyone)
        last_full = time.monotonic()
        recheck = set(macs)          # phones whose verification must be looked at this pass
        while True:
            started = time.monotonic()
            if self.rs.get_field(self.rid, "abort") == "1":
                self._settle(macs)
                return Outcome("aborted", "aborted by request", self.counts())
            changed, observed = self.rs.feed_read(positions, block=self.poll)
            if time.monotonic() - last_full > FULL_READ_S:
                snapshot = self.rs.phones(self.rid, everyone)
                last_full = time.monotonic()
                recheck |= wave_set
            elif changed:
                snapshot.update(self.rs.phones(self.rid, [m for m in changed if m in self.site_of]))
            recheck |= (changed | observed) & wave_set
            wave_states = {m: snapshot[m] for m in macs}   # the same dicts as the snapshot's: updates show in both
            self._advance(wave_states, recheck, snapshot)
            recheck = set()
            self.progress(self.counts_by_site(snapshot))
            spent = self._budget_spent(snapshot)
            if spent:
                self._settle(macs)
                return Outcome("halted", spent, self.counts())
            if all(snapshot[m].get("state") in self.rs.SETTLED for m in macs):
                return None
            if time.monotonic() > deadline:
                self._settle(macs)
                return Outcome("halted", f"wave {wave} missed its progress deadline "
                                         f"({self.pb.strategy.progress_deadline:g}s)", self.counts())
            self._dispatch(wave_states, snapshot)
            time.sleep(max(0.0, MIN_PASS_S - (time.monotonic() - started)))   # busy feeds: a pass at most every 20 ms

    def _settle(self, macs: list[str]) -> None:
        """Stop sending work; let phones already rebooting finish (verified, failed or rolled back)."""
        end = time.monotonic() + self.pb.verify.within * 2 + 30
        while time.monotonic() < end:
            states = self.rs.phones(self.rid, macs)
            self._advance(states, set(macs), states)
            if not any(s.get("state") in IN_FLIGHT for s in states.values()):
                return
            time.sleep(self.poll)

    # ---------------------------------------------------------------- per phone
    def _set(self, snapshot: dict[str, dict], mac: str, **fields) -> None:
        """Write a phone's fields and mirror them in the snapshot, so this pass's later decisions see them."""
        self.rs.set_phone(self.rid, mac, **fields)
        snapshot.setdefault(mac, {}).update({k: str(v) for k, v in fields.items()})

    def _unavailable(self, snapshot: dict[str, dict]) -> dict[str, int]:
        """Phones of each site between dispatch and settling, across all waves."""
        counts: dict[str, int] = {s: 0 for s in self._sites()}
        for mac, st in snapshot.items():
            if st.get("state") in IN_FLIGHT:
                counts[self.site_of[mac]] += 1
        return counts

    def _dispatch(self, states: dict[str, dict], snapshot: dict[str, dict]) -> None:
        now = time.time()
        limits = self.plan["max_unavailable"]
        unavailable = self._unavailable(snapshot)
        for mac, st in states.items():
            state = st.get("state")
            ready = state == "pending" or (state == "deferred" and now - float(st.get("deferred_at", 0)) > DEFER_RETRY_S)
            if not ready:
                continue
            site = self.site_of[mac]
            if unavailable[site] >= limits[site]:
                continue
            unavailable[site] += 1
            attempt = int(st.get("attempt", 1))
            self._set(snapshot, mac, state="dispatched", dispatched_at=now)
            celery_app.send_task("fleet.rollout_push", args=[self.rid, mac, attempt], queue=site_queue(site), ignore_result=True)

    def _advance(self, states: dict[str, dict], recheck: set[str], snapshot: dict[str, dict]) -> None:
        """Verification and rollback decisions, from the collectors' observations in the store.

        Observations are read only for the phones in `recheck` (something was
        observed or changed); every other waiting phone only has its clocks
        looked at, which needs no I/O.
        """
        now = time.time()
        looked_at = [m for m in recheck if states.get(m, {}).get("state") in ("verifying", "rolling_back")]
        self._phone_states = self.store.phone_states(looked_at) if looked_at else {}
        for mac, st in states.items():
            state = st.get("state")
            site = self.site_of[mac]
            if state in ("dispatched", "publishing") and now - float(st.get("dispatched_at") or now) > DISPATCH_STALL_S:
                # the task was lost with its worker before it did anything visible: send it again
                self._set(snapshot, mac, dispatched_at=now)
                celery_app.send_task("fleet.rollout_push", args=[self.rid, mac, int(st.get("attempt", 1))], queue=site_queue(site),
                                     ignore_result=True)
            elif state in ("verifying", "rebooting") and st.get("reboot_at"):
                # "rebooting" means the reboot was claimed but not yet known to be sent: no registration proves it
                since = float(st["reboot_at"])
                if state == "verifying" and mac in self._phone_states and self._registered(mac, self.required, since):
                    self.store_pushed(mac, self._entries[mac])
                    self._set(snapshot, mac, state="verified", settled_at=now, verified_in=round(now - since, 2))
                    self.rs.log(self.rid, "verified", mac=mac, seconds=round(now - since, 2))
                elif (state == "rebooting" and now - since > DISPATCH_STALL_S
                      and now - float(st.get("confirm_sent") or 0) > DISPATCH_STALL_S):
                    # the task claimed the reboot and vanished before saying it went out: a task finds out and finishes
                    self._set(snapshot, mac, confirm_sent=now)
                    celery_app.send_task("fleet.rollout_push", args=[self.rid, mac, int(st.get("attempt", 1))], queue=site_queue(site),
                                         ignore_result=True)
                elif now - since > self.pb.verify.within:
                    reason = f"not registered to server(s) {self.required} within {self.pb.verify.within:g}s of the reboot"
                    self.rs.log(self.rid, "failed", mac=mac, reason=reason)
                    if self.pb.rollback:
                        self._set(snapshot, mac, state="rolling_back", error=reason, rollback_requested=now)
                        celery_app.send_task("fleet.rollout_rollback", args=[self.rid, mac], queue=site_queue(site), ignore_result=True)
                    else:
                        self._set(snapshot, mac, state="failed", error=reason, settled_at=now)
            elif state == "rolling_back" and st.get("rollback_at"):
                since = float(st["rollback_at"])
                if mac in self._phone_states and self._registered(mac, [1], since):
                    self._set(snapshot, mac, state="rolled_back", settled_at=now)
                    self.rs.log(self.rid, "rolled_back", mac=mac)
                elif now - since > self.pb.verify.within:
                    self._set(snapshot, mac, state="rollback_failed", settled_at=now,
                              error=(st.get("error", "") + "; the rolled-back phone did not re-register")[:300])
                    self.rs.log(self.rid, "rollback_failed", mac=mac)

    def store_pushed(self, mac: str, entry: dict) -> None:
        # secrets as references (names in the secrets file, never values): the next plan diffs against them
        self.rs.set_pushed(mac, {**entry["params"], **entry.get("secret_refs", {})}, entry["config_hash"])

    def _registered(self, mac: str, servers: list[int], since: float) -> bool:
        st = self._phone_states[mac]
        return all(st.servers.get(i, {}).get("state") == "registered" and st.servers[i].get("t", 0) > since for i in servers)

    # ---------------------------------------------------------------- accounting
    def counts(self) -> dict:
        states = self.rs.phones(self.rid, list(self.site_of))
        counts: dict = {"total": len(states)}
        for st in states.values():
            counts[st.get("state", "?")] = counts.get(st.get("state", "?"), 0) + 1
        return counts

    def counts_by_site(self, states: dict[str, dict]) -> dict[str, dict]:
        out: dict[str, dict] = {}
        for mac, st in states.items():
            c = out.setdefault(self.site_of[mac], {"total": 0, "settled": 0, "failed": 0})
            c["total"] += 1
            c["settled"] += st.get("state") in self.rs.SETTLED
            c["failed"] += st.get("state") in FAILED
        return out

    def _budget_spent(self, states: dict[str, dict]) -> str:
        failed = [m for m, st in states.items() if st.get("state") in FAILED
                  or (st.get("state") == "rolling_back")]
        if len(failed) > self.budget_total:
            return f"failure budget spent: {len(failed)} phones failed (budget {self.budget_total})"
        per_site = self.plan.get("budget_per_site")
        if per_site:
            for site, limit in per_site.items():
                n = sum(1 for m in failed if self.site_of[m] == site)
                if n > int(limit):
                    return f"failure budget of site {site} spent: {n} phones failed (budget {limit})"
        return ""


class Overloaded(ValueError):
    """The change would push a registrar over its REGISTER/s limit (R6) and the playbook does not allow it."""


def create(playbook_path: str, inventory_path: str, store: Store, rid: str | None = None):
    """Validate, plan and record a rollout; returns (id, playbook, inventory, plan). Nothing is touched yet."""
    from pathlib import Path

    from . import inventory as inv_mod
    from . import rollout_playbook
    from .rollout_plan import plan

    pb = rollout_playbook.load(playbook_path)
    inv = inv_mod.load(inventory_path)
    rid = rid or new_id(pb.name)
    rs = RolloutStore(store)
    p = plan(inv, pb, rid, rs.last_pushed([ph.mac for s in inv.sites for ph in s.phones]), inv.registrar_limits)
    if p.overloaded and not pb.strategy.allow_overload:
        raise Overloaded("; ".join(p.overloaded))
    rs.create(rid, pb.name, p.to_dict(), {"playbook_path": str(Path(playbook_path).resolve()),
                                          "inventory_path": str(Path(inventory_path).resolve())})
    return rid, pb, inv, p
