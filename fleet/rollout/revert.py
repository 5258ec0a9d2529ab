"""`fleet rollout revert ID`: a finished rollout rolled back from its backups, as a rollout of its own.

A revert is planned like any rollout (the reverted rollout's waves, canaries
first, its max unavailable and failure budget, verification after each
reboot, rollback of a phone that fails), but each phone's push writes the
reverted rollout's `<file>.before-<id>` backups back (fleet.rollout.backups.restored)
instead of rendering files, and records what the phone ran before as what it
runs now, with who set each value, so later rollouts stack on that.

It is refused (RevertRefused, bad input) when the rollout is not finished,
did not keep its backups (`keep_backups: true`) or had them removed, has no
verified phone, or when a later rollout changed one of its phones (its files
would be thrown away too) unless `force`. Backups missing on a boot server
are found before anything starts (missing_backups).
"""
from __future__ import annotations

from collections import defaultdict

from soundpoint import values

from fleet.config.inventory import Credentials, Inventory, Secrets
from fleet.drivers.errors import DriverError
from fleet.drivers.publish import open_publisher
from fleet.phoneconf import predict
from fleet.phoneconf import secrets as secret_params
from fleet.rollout import applied, backups, record_check
from fleet.rollout.plan import Plan, PhonePlan, config_hash
from fleet.rollout.playbook import RolloutPlaybook, Verify
from fleet.rollout.policy import FINISHED
from fleet.state.store import RolloutStore


class RevertRefused(ValueError):
    """The rollout cannot be reverted; the message says why and what to do."""


def _phone_entry(rid: str, entry: dict) -> PhonePlan:
    """The revert of one phone: back to what it ran before `rid` (its plan's `previous`; none: the site's files)."""
    prev = entry.get("previous") or {}
    params, refs = dict(prev.get("params", {})), dict(prev.get("secret_refs", {}))
    now = {**entry.get("params", {}), **entry.get("secret_refs", {})}
    before = {**params, **refs}
    diff = {k: [secret_params.mask(k, now.get(k)), secret_params.mask(k, before.get(k))]
            for k in sorted(set(now) | set(before)) if now.get(k) != before.get(k)}
    set_by = {k: list(v) for k, v in prev.get("set_by", {}).items()}
    # what it runs until the revert: the reverted rollout's push, so a revert can be reverted in turn
    reverted = {"params": dict(entry.get("params", {})), "secret_refs": dict(entry.get("secret_refs", {})),
                "verbatim": list(entry.get("verbatim", [])), "rollout": rid, "config_hash": entry.get("config_hash", ""),
                "set_by": {k: list(v) for k, v in entry.get("set_by", {}).items()}}
    return PhonePlan(entry["mac"], entry["site"], entry.get("model", ""), params, diff, config_hash(before), refs,
                     list(prev.get("verbatim", [])), set_by=set_by, diff_against="pushed",
                     previous=reverted, restore_from=rid)


def plan_revert(rs: RolloutStore, rid: str, new_rid: str, force: bool = False) -> tuple[Plan, list[str]]:
    """The revert's plan and notes (phones left as they are, and why); RevertRefused when it may not run."""
    meta = rs.get(rid)
    if not meta:
        raise RevertRefused(f"no rollout {rid}" + _ids_hint(rs, rid))
    status = meta.get("status")
    if status not in FINISHED:
        raise RevertRefused(f"rollout {rid} is {status}: only a finished rollout (done or aborted) can be reverted"
                            + ("; `fleet rollout resume` or `abort` it first" if status in ("halted", "running") else ""))
    removed = sorted(k.split(":", 1)[1] for k in meta if k.startswith("backups_removed:"))
    if meta.get("keep_backups") != "1" or removed:
        raise RevertRefused(f"rollout {rid} did not keep its backups"
                            + (f" (removed from site(s) {', '.join(removed)} when it finished)" if removed else "")
                            + ": only a rollout whose playbook says `keep_backups: true` can be reverted; "
                              "run a playbook that sets the old values instead")
    plan = meta["plan"]
    macs = [p["mac"] for p in plan["phones"]]
    records = rs.phones(rid, macs, full=True)
    versions = rs.config_versions(macs)
    notes, changed, entries = [], [], {}
    for entry in plan["phones"]:
        mac, record = entry["mac"], records.get(entry["mac"], {})
        if record.get("state") != "verified":
            notes.append(f"{mac}: {record.get('state') or 'not touched'} in rollout {rid}, left as it is")
            continue
        if versions.get(mac) != entry["config_hash"]:
            changed.append(mac)
        entries[mac] = _phone_entry(rid, entry)
    if not entries:
        raise RevertRefused(f"rollout {rid} has no verified phone: nothing of it to revert")
    if changed:
        by = applied.read(rs, changed)
        later = "; ".join(f"{m} now runs {('rollout ' + by[m].rollout) if m in by and by[m].rollout else 'another configuration'}"
                          for m in changed[:5]) + (f"; and {len(changed) - 5} more" if len(changed) > 5 else "")
        if not force:
            raise RevertRefused(f"a later rollout changed phones of rollout {rid} ({later}): reverting would put back "
                                f"the files from before {rid} and throw that away too; revert the later rollout "
                                "first, or --force")
        notes.append(f"--force: {later}; their files go back to before {rid} too")
    waves = [[m for m in wave if m in entries] for wave in plan["waves"]]
    waves = [w for w in waves if w]
    per_site = defaultdict(int)
    for p in entries.values():
        per_site[p.site] += 1
    phones = [entries[m] for wave in waves for m in wave]
    out = Plan(new_rid, phones, waves, {s: int(plan["max_unavailable"].get(s, 1)) for s in per_site},
               int(plan["budget_total"]),
               {s: int(plan["budget_per_site"].get(s, 0)) for s in per_site} if plan.get("budget_per_site") else None)
    return out, notes


def _ids_hint(rs: RolloutStore, rid: str) -> str:
    return values.did_you_mean(rid, [r["id"] for r in rs.list(200) if r.get("id")])


def revert_playbook(pb: RolloutPlaybook, plan: dict) -> RolloutPlaybook:
    """The reverted rollout's playbook as the revert runs it: its strategy and verification time, no drill or
    schedule, and only the servers every phone registers to once reverted (server 1 when the site's files decide)."""
    registered_to = list(pb.verify.registered_to)
    for entry in plan["phones"]:
        params = {**entry.get("params", {}), **entry.get("secret_refs", {})}
        configured = {t.index for t in predict.servers(params) if t.register} if params else {1}
        registered_to = [n for n in registered_to if n in configured]
    return pb.model_copy(update={"name": f"revert-{pb.name}"[:64], "drill": None, "schedule": None,
                                 "verify": Verify(registered_to=registered_to or [1], within=pb.verify.within)})


def missing_backups(inv: Inventory, rs: RolloutStore, rid: str, p: Plan) -> list[str]:
    """Each backup the revert needs that is not on its boot server (read only), as `<file> on <boot server>`."""
    secrets = Secrets(inv)
    by_site: dict[str, list[str]] = defaultdict(list)
    for ph in p.phones:
        by_site[ph.site].append(ph.mac)
    missing = []
    for site_name, macs in by_site.items():
        site = inv.site(site_name)
        creds = secrets.credentials(site.boot_server.credentials) if site.boot_server.credentials else Credentials()
        try:
            pub = open_publisher(site.boot_server.url, creds)
        except DriverError as exc:
            missing.append(f"site {site_name}: boot server not readable ({exc})")
            continue
        try:
            for mac, record in rs.phones(rid, macs, full=True).items():
                marks = record_check.restore_marks(inv, rid, mac, record)
                for name, mark in sorted(marks.items()):
                    if mark == "yes" and pub.read(backups.backup_name(name, rid)) is None:
                        missing.append(f"{backups.backup_name(name, rid)} on {pub.name}")
        finally:
            pub.close()
    return missing


def meta_for(rid: str, meta: dict, pb: RolloutPlaybook) -> dict:
    """The revert's own record fields: which rollout it reverts, the paths a resume reloads, and whether its own
    backups stay (as the reverted rollout's did: a revert can be reverted in turn)."""
    return {"playbook_path": meta.get("playbook_path", ""), "inventory_path": meta.get("inventory_path", ""),
            "revert_of": rid, "keep_backups": "1" if pb.keep_backups else "0", "limit": ""}
