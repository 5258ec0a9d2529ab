"""Celery tasks: thin, idempotent where it matters, arguments are ids.

Each task loads what it needs by id (site name, MAC) from the worker's
inventory, calls a driver, and returns a JSON-able result. Driver errors come
back as {"ok": False, "error": ...} with the device named, so a report shows a
reason instead of a traceback; only transient faults would be worth a retry,
and for outages we prefer to fail fast and restore.
"""
from __future__ import annotations

import asyncio
import functools
import logging
import os
import threading
import time

from celery import signals

from . import inventory as inv_mod
from . import phones, plan_check, secret_params, task_args
from .celeryapp import app
from .drivers import router as routers
from .drivers.control.rest import RestPhone
from .drivers.errors import DriverError
from .drivers.probe import probe_provider
from .deadline import poll_until
from .failpoints import failpoint
from .task_args import validated

log = logging.getLogger(__name__)


@functools.lru_cache(maxsize=4)
def _inventory(path: str) -> tuple[inv_mod.Inventory, inv_mod.Secrets]:
    inv = inv_mod.load(path)
    return inv, inv_mod.Secrets(inv)


_inventory_lock = threading.Lock()


def context() -> tuple[inv_mod.Inventory, inv_mod.Secrets]:
    """The worker's inventory, parsed once: without the lock, a thread pool's first tasks each parse it at once."""
    path = os.environ.get("FLEET_INVENTORY")
    if not path:
        raise RuntimeError("FLEET_INVENTORY is not set for this worker (start it with `fleet worker --inventory FILE`)")
    with _inventory_lock:
        return _inventory(path)


def _router(site_name: str):
    inv, secrets = context()
    site = inv.site(site_name)
    if site.router is None:
        raise DriverError(f"site {site_name}", "no router in the inventory")
    return site, routers.connect(site.router, secrets.credentials(site.router.credentials))


def _probe(site: inv_mod.Site) -> dict:
    inv, _ = context()
    if inv.provider is None:
        return {"reachable": None, "stage": "none", "detail": "no provider in the inventory"}
    dns = None
    if site.dns:
        host, _, port = site.dns.rpartition(":")
        dns = (host, int(port))
    return asyncio.run(probe_provider(inv.provider.name, inv.provider.port, dns)).to_dict()


def _with_router(site_name: str, work, **result) -> dict:
    """Open the site's router driver, run `work(site, driver, result)`, and turn any driver error into
    {"ok": False, "error": ...} naming the device; the driver is always closed."""
    try:
        site, drv = _router(site_name)
    except (DriverError, KeyError) as exc:
        return {"ok": False, "error": str(exc)}
    result.setdefault("ok", False)
    try:
        work(site, drv, result)
        result["ok"] = True
    except DriverError as exc:
        result["error"] = str(exc)
    finally:
        drv.close()
    return result


# Cut and restore tasks expire: a cut that no worker started in time must never run later, after the
# controller has moved on (the router-side protocol makes a late one harmless; expiry keeps it from running).
@app.task(name="fleet.router_outage", acks_late=True)
@validated(task_args.RouterOutageArgs)
def router_outage(site_name: str, exp_id: str, outage_id: str, mode: str, max_duration: int, loss: float = 0.0,
                  delay_ms: int = 0, rate_kbit: int = 0) -> dict:
    """Arm the dead-man's switch and cut in one step on the router, then prove the cut from the LAN side."""
    from . import outage
    from .drivers.router import OutageSpec

    spec = OutageSpec(outage_id, mode, max_duration, loss, delay_ms, rate_kbit)

    def work(site, drv, result: dict) -> None:
        result.update(outage.cut(_stores(os.environ["FLEET_REDIS_URL"])[0], drv, spec, lambda: _probe(site)))

    return _with_router(site_name, work, mode=mode, outage_id=outage_id)


@app.task(name="fleet.router_restore", acks_late=True)
@validated(task_args.RouterRestoreArgs)
def router_restore(site_name: str, exp_id: str, outage_id: str, mode: str, probe_for: float = 10.0) -> dict:
    """End the outage (idempotent; cancels a cut that has not happened yet), then wait for the LAN to see the provider."""
    from . import outage

    def work(site, drv, result: dict) -> None:
        result.update(outage.restore(_stores(os.environ["FLEET_REDIS_URL"])[0], drv, outage_id, mode))
        if result["outcome"] == "cancelled-before-cut":
            return
        last: dict = {}

        def reachable() -> bool:
            last.update(_probe(site))
            return last.get("reachable") is not False

        poll_until(reachable, probe_for, 0.5)
        result["probe"] = dict(last)

    return _with_router(site_name, work, mode=mode, outage_id=outage_id)


@app.task(name="fleet.router_state", acks_late=True)
@validated(task_args.RouterStateArgs)
def router_state(site_name: str, outage_id: str | None = None) -> dict:
    def work(site, drv, result: dict) -> None:
        result["state"] = drv.wan_state(outage_id)
        result["probe"] = _probe(site)

    return _with_router(site_name, work)


@app.task(name="fleet.place_call", acks_late=True)
@validated(task_args.PlaceCallArgs)
def place_call(site_name: str, exp_id: str, mac: str, number: str) -> dict:
    inv, secrets = context()
    try:
        _, phone = inv.phone(mac)
        if not phone.family.rest:
            return {"ok": False, "error": f"phone {mac} ({phone.model}, {phone.family.name}) has no REST API to place a call from"}
        RestPhone(phone, secrets.credentials(phone.credentials)).dial(number)
        return {"ok": True, "t": time.time()}
    except (DriverError, KeyError) as exc:
        return {"ok": False, "error": str(exc)}


# ---------------------------------------------------------------- collectors in the worker's main process
_collectors: list = []


@signals.worker_ready.connect
def _start_collectors(sender=None, **_: object) -> None:
    sites = [s for s in os.environ.get("FLEET_COLLECT_SITES", "").split(",") if s]
    if not sites:
        return
    from .collector import start_site_collectors
    from .store import Store

    inv, secrets = context()
    _collectors.extend(start_site_collectors(inv, secrets, Store(os.environ["FLEET_REDIS_URL"]), sites))


# ---------------------------------------------------------------- rollouts
@functools.lru_cache(maxsize=2)
def _stores(url: str):
    """One Redis connection pool per worker process, not one per task."""
    from .store import RolloutStore, Store

    store = Store(url)
    return store, RolloutStore(store)


def _rollout_ctx(rid: str, mac: str, settle_as: str):
    """The phone's rollout record, re-checked (plan_check) before anything acts on it.

    A record that fails the check settles the phone as `settle_as` with the
    reason and touches nothing else; a record that does not exist (or a
    phone this worker does not know) fails the task itself.
    """
    inv, secrets = context()
    store, rs = _stores(os.environ["FLEET_REDIS_URL"])
    state = rs.phone(rid, mac)   # the full record: state, this phone's plan, backup flags
    try:
        plan = plan_check.check(inv, rid, mac, state)
    except plan_check.PlanRefused as exc:
        log.warning("rollout %s: refused the record of phone %s: %s", rid, mac, exc)
        if not state:
            raise   # no record to settle: the task itself fails, with the reason
        if state.get("state") not in rs.SETTLED:
            rs.set_phone(rid, mac, state=settle_as, error=f"refused: {exc}"[:300], settled_at=time.time())
        return None
    return inv, secrets, store, rs, state, plan






@app.task(name="fleet.rollout_push", acks_late=True, ignore_result=True)
@validated(task_args.RolloutPushArgs)
def rollout_push(rid: str, mac: str, attempt: int) -> dict:
    """Render, back up, publish and reboot one phone. Idempotent per (rollout, phone, attempt)."""
    from . import site_files
    from .drivers.publish import open_publisher

    ctx = _rollout_ctx(rid, mac, "failed")
    if ctx is None:
        return {"state": "failed", "error": "the phone's rollout record was refused"}
    inv, secrets, store, rs, state, plan = ctx
    site, phone = plan.site, plan.phone
    if plan.attempt != attempt or state.get("state") in rs.SETTLED:
        return {"state": state.get("state"), "note": "already done for this attempt"}
    try:
        # a credential this worker cannot resolve (another secrets file, an env: variable it lacks) fails the
        # phone with the reason, instead of failing the task and leaving the phone "dispatched" to be re-sent
        creds = secrets.credentials(phone.credentials)
        boot_creds = (secrets.credentials(site.boot_server.credentials) if site.boot_server.credentials
                      else inv_mod.Credentials())
    except (KeyError, ValueError) as exc:
        return _failed(rs, rid, mac, DriverError(f"phone {mac}", f"credentials: {exc}"))
    if state.get("state") == "rebooting" and state.get("reboot_at"):
        return _confirm_reboot(rid, mac, attempt, float(state["reboot_at"]),
                               phones.for_phone(phone, creds, inv, secrets, store), plan.params, rs)
    if state.get("reboot_at"):
        return {"state": state.get("state"), "note": "already done for this attempt"}
    if rs.config_version(mac) == plan.config_hash:
        rs.set_phone(rid, mac, state="skipped", settled_at=time.time())
        return {"state": "skipped"}
    control = phones.for_phone(phone, creds, inv, secrets, store)   # one session for the check and the reboot
    check = control.call_check()
    if not check.may_reboot:    # in a call, or cannot tell: deferred, never rebooted
        rs.set_phone(rid, mac, state="deferred", deferred_at=time.time(), deferred_reason=f"{check.state}: {check.reason}"[:300])
        rs.log(rid, "deferred", mac=mac, call_state=check.state, reason=check.reason[:300])
        return {"state": "deferred", "reason": check.reason}
    try:
        resolved = secret_params.resolve(plan.params, plan.secret_refs, secrets.resolve_param)
        pub = open_publisher(site.boot_server.url, boot_creds)
        try:
            # the site's master file with ours first; override files read for what they shadow (fleet.site_files)
            prepared = site_files.phone_files(pub, site.boot_server.url, mac, resolved,
                                              lambda url: open_publisher(url, boot_creds))
            files = prepared.files
            rs.set_phone(rid, mac, shadowed=prepared.shadowed())   # fleet.overrides: verification fails such a phone
            todo = [n for n in files if not state.get(f"backed_up:{n}")]
            rs.set_phone(rid, mac, state="publishing", **{f"backing_up:{n}": "1" for n in todo})
            outcome = {}
            for name in todo:
                backup = f"{name}.before-{rid}"
                # a task redelivered after it began backing up must not take the new file for the old one
                if state.get(f"backing_up:{name}") and pub.read(backup) is not None:
                    outcome[f"backed_up:{name}"] = "yes"
                    continue
                old = pub.read(name)
                if old is not None and old != files[name]:
                    pub.write(backup, old)
                # "same": the file already holds what we render (the master file, mostly): nothing to write or restore
                outcome[f"backed_up:{name}"] = "absent" if old is None else ("same" if old == files[name] else "yes")
            if outcome:
                rs.set_phone(rid, mac, **outcome)
            marks = {n: outcome.get(f"backed_up:{n}") or state.get(f"backed_up:{n}") for n in files}
            for name in sorted(files, key=lambda n: n == f"{mac}.cfg"):   # the master file last
                if marks[name] != "same":
                    pub.write(name, files[name])
        finally:
            pub.close()
        if not rs.claim_reboot(rid, mac, attempt):
            # an earlier copy of this task claimed the reboot and died before recording it
            if rs.phone(rid, mac).get("reboot_at"):
                return {"state": "rebooting", "note": "reboot already sent for this attempt"}
            since = rs.reboot_claimed_at(rid, mac, attempt) or time.time()
            rs.set_phone(rid, mac, state="rebooting", reboot_at=since)
            return _confirm_reboot(rid, mac, attempt, since, control, plan.params, rs)
        failpoint("rollout.reboot_claimed", mac)
        reboot_at = time.time()
        rs.set_phone(rid, mac, state="rebooting", reboot_at=reboot_at)
        failpoint("rollout.reboot_recorded", mac)
        how = control.reboot()
        failpoint("rollout.reboot_sent", mac)
        rs.set_phone(rid, mac, state="verifying", reboot_via=how)
        return {"state": "verifying", "reboot_at": reboot_at}
    except (DriverError, KeyError, ValueError) as exc:
        return _failed(rs, rid, mac, exc)


def _failed(rs, rid: str, mac: str, exc: Exception) -> dict:
    """Settle the phone as failed with why; the driver counts it against the budget."""
    rs.set_phone(rid, mac, state="failed", error=str(exc)[:300], settled_at=time.time())
    return {"state": "failed", "error": str(exc)[:300]}




def _confirm_reboot(rid: str, mac: str, attempt: int, since: float, control: phones.PhoneControl, params: dict,
                    rs) -> dict:
    """The task that claimed this reboot died before it recorded sending it: send it only if the phone never got it.

    Exactly one confirmation runs per attempt (its own claim), so a phone is
    rebooted at most once per attempt even when several copies are redelivered.
    """
    if not rs.claim_reboot(rid, mac, f"{attempt}-confirm"):
        return {"state": "rebooting", "note": "reboot already being confirmed"}
    try:
        if control.rebooted_since(since, params):
            rs.set_phone(rid, mac, state="verifying", reboot_via="confirmed after a lost task")
            return {"state": "verifying", "note": "the phone had rebooted"}
        reboot_at = time.time()
        rs.set_phone(rid, mac, reboot_at=reboot_at)
        how = control.reboot()
        rs.set_phone(rid, mac, state="verifying", reboot_via=how + ", resent after a lost task")
        return {"state": "verifying", "reboot_at": reboot_at}
    except (DriverError, KeyError, ValueError) as exc:
        return _failed(rs, rid, mac, exc)


@app.task(name="fleet.rollout_rollback", acks_late=True, ignore_result=True)
@validated(task_args.RolloutRollbackArgs)
def rollout_rollback(rid: str, mac: str) -> dict:
    """Put the phone's previous files back and reboot it; the controller verifies it re-registers."""
    from .drivers.publish import open_publisher

    ctx = _rollout_ctx(rid, mac, "rollback_failed")
    if ctx is None:
        return {"state": "rollback_failed", "error": "the phone's rollout record was refused"}
    inv, secrets, store, rs, state, plan = ctx
    site, phone = plan.site, plan.phone
    if state.get("rollback_at"):
        return {"state": state.get("state"), "note": "rollback already sent"}
    boot_creds = secrets.credentials(site.boot_server.credentials) if site.boot_server.credentials else inv_mod.Credentials()
    try:
        pub = open_publisher(site.boot_server.url, boot_creds)
        try:
            for name, value in plan.backups.items():   # only the renderer's names for this MAC
                if value == "same":
                    continue
                if value == "absent":
                    pub.delete(name)
                else:
                    old = pub.read(f"{name}.before-{rid}")
                    if old is None:
                        raise DriverError(pub.name, f"backup of {name} is missing")
                    pub.write(name, old)
        finally:
            pub.close()
        rs.set_phone(rid, mac, state="rolling_back", rollback_at=time.time())
        phones.for_phone(phone, secrets.credentials(phone.credentials), inv, secrets, store).reboot()
        return {"state": "rolling_back"}
    except (DriverError, KeyError, ValueError) as exc:
        rs.set_phone(rid, mac, state="rollback_failed", error=str(exc)[:300], settled_at=time.time())
        return {"state": "rollback_failed", "error": str(exc)[:300]}


@app.task(name="fleet.rollout_cleanup", acks_late=True, ignore_result=True)
@validated(task_args.RolloutCleanupArgs)
def rollout_cleanup(rid: str, site_name: str) -> dict:
    """Delete a finished rollout's `<file>.before-<id>` backups on the site's boot server: they may hold SIP passwords."""
    from . import rollout_backups
    from .drivers.publish import open_publisher
    from .rollout import FINISHED

    inv, secrets = context()
    _, rs = _stores(os.environ["FLEET_REDIS_URL"])
    meta = rs.get(rid)
    if not meta or meta.get("status") not in FINISHED:
        return {"ok": False, "error": f"rollout {rid[:80]!r} is not finished: its backups stay"}
    try:
        site = inv.site(site_name)
        mine = {p.mac for p in site.phones}
        macs = [p["mac"] for p in meta["plan"]["phones"] if p.get("mac") in mine]
        boot_creds = secrets.credentials(site.boot_server.credentials) if site.boot_server.credentials else inv_mod.Credentials()
        pub = open_publisher(site.boot_server.url, boot_creds)
        try:
            removed, kept = rollout_backups.remove(pub, rid, rs.phones(rid, macs, full=True))
        finally:
            pub.close()
    except (DriverError, KeyError, ValueError) as exc:
        rs.log(rid, "backups_removal_failed", site=site_name, error=str(exc)[:300])
        return {"ok": False, "error": str(exc)[:300]}
    rs.set(rid, **{f"backups_removed:{site_name}": time.time()})
    rs.log(rid, "backups_removed", site=site_name, files=removed, kept_for_failed_rollback=kept)
    return {"ok": True, "removed": removed, "kept": kept}


@app.task(name="fleet.scheduled_rollout", acks_late=True)
@validated(task_args.ScheduledRolloutArgs)
def scheduled_rollout(playbook_path: str, inventory_path: str, schedule_name: str, fire_time: str | None = None) -> dict:
    """One scheduled run: create its rollout (id from the schedule's name and `fire_time`) and drive it once.

    A redelivered copy (acks_late, the broker's visibility timeout) computes the
    same id and finds the rollout driven or finished; see fleet.schedule.
    """
    from .schedule import run_scheduled

    store, _ = _stores(os.environ["FLEET_REDIS_URL"])
    return run_scheduled(store, playbook_path, inventory_path, schedule_name, fire_time)
