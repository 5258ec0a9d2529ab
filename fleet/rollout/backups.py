"""The boot-server backups a rollout writes before it changes a phone's files, and their removal once it is finished.

`<file>.before-<rollout id>` holds what the phone ran before: rollback needs
it, but it may hold SIP passwords, so it must not outlive the rollout. The
names to delete are derived from the MAC (polycom.phone_file_names: the
phone's master and fleet's own file, never a shared file), never read from
Redis, so a forged record cannot point the deletion elsewhere.

Rollback puts every file back byte for byte: a backed-up file is written
back as it was; a file the push created (mark `absent`, such as a `<MAC>.cfg`
made from the default master) is deleted; a file the push left as it was
(`same`) is not touched. A master named in the boot-server address is shared
by the site's phones: it is written back only once no phone of the site has
a fleet file left on the boot server (fleet.rollout.work.rollback).
"""
from __future__ import annotations

import re
import time
from dataclasses import dataclass, field

from soundpoint.deadline import Deadline

from fleet.phoneconf import polycom
from fleet.drivers.publish import Publisher
from fleet.rollout.progress import EventTail
from fleet.state.store import RolloutStore
from fleet.worker.app import app, site_queue

# rollout ids as fleet.rollout.driver.new_id makes them (and scheduled ones): a file-name suffix, nothing more
SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,120}$")


def backup_name(name: str, rid: str) -> str:
    return f"{name}.before-{rid}"


def restored(pub: Publisher, rid: str, mac: str, marks: dict[str, str], named_master: str = "",
             others: tuple[str, ...] = ()) -> dict[str, bytes | None]:
    """The phone's files as they were before rollout `rid`, from its backups (a revert): name -> content, or None
    for a file the rollout created (to delete). A file the rollout left as it was is not listed.

    The named master, shared by the site's phones, is put back only when none of `others` (the site's other
    phones) has a fleet file on the boot server: they still need its entry. A backup that is gone raises
    ValueError naming it, before anything is written.
    """
    if not SAFE_ID.match(rid):
        raise ValueError(f"rollout id {rid[:80]!r} is not a plain name")
    out: dict[str, bytes | None] = {}
    for name, mark in sorted(marks.items()):
        if mark == "same":
            continue
        if name == named_master and named_master:
            if mark != "yes" or any(pub.read(polycom.fleet_file_name(m)) is not None for m in others):
                continue
        if mark == "absent":
            out[name] = None
            continue
        old = pub.read(backup_name(name, rid))
        if old is None:
            raise ValueError(f"the backup of {name} from rollout {rid} ({backup_name(name, rid)}) is gone from "
                             f"{pub.name}: phone {mac} cannot be reverted")
        out[name] = old
    return out


def remove(pub: Publisher, rid: str, phones: dict[str, dict], named_master: str = "") -> tuple[int, int]:
    """Delete the backups `phones` (MAC -> rollout record) say were written; (files removed, phones kept).

    A phone whose rollback failed keeps its backup: it is the operator's copy
    of what the phone ran, to put back by hand.
    """
    if not SAFE_ID.match(rid):
        raise ValueError(f"rollout id {rid[:80]!r} is not a plain name")
    removed = kept = 0
    shared_backup = False     # the named master's one backup: kept while any phone that wrote it keeps its own
    for mac, record in phones.items():
        if record.get("state") == "rollback_failed":
            kept += 1
            continue
        for name in polycom.phone_file_names(mac, named_master):
            mark = record.get(f"backed_up:{name}")
            # "absent" or "same": no backup was written. A backup begun and never marked (its task died) may exist:
            # it is looked for, so the count says how many files were really removed
            if mark == "yes" or (record.get(f"backing_up:{name}") and mark is None):
                if name == named_master:
                    shared_backup = True
                    continue
                if mark != "yes" and pub.read(backup_name(name, rid)) is None:
                    continue
                pub.delete(backup_name(name, rid))
                removed += 1
    if shared_backup and not kept:
        pub.delete(backup_name(named_master, rid))
        removed += 1
    return removed, kept


@dataclass
class Removal:
    """What the sites' workers said about removing a rollout's backups (fleet.rollout.work.cleanup)."""
    removed: int = 0                                          # backup files deleted
    kept: int = 0                                             # phones whose backup stays: their rollback failed
    failed: dict[str, str] = field(default_factory=dict)      # site -> why its worker could not remove them
    unanswered: list[str] = field(default_factory=list)       # sites whose worker said nothing within the wait


def send_removal(rid: str, sites: list[str]) -> None:
    """Have each site's worker delete the rollout's backups (the task `fleet.rollout_cleanup`, sent by name: the
    worker reaches the site's boot server with the site's own credentials)."""
    for site in sites:
        app.signature("fleet.rollout_cleanup", args=(rid, site)).apply_async(queue=site_queue(site),
                                                                               ignore_result=True)


def remove_backups(rs: RolloutStore, rid: str, sites: list[str], wait: float, poll: float = 0.2) -> Removal:
    """Send the removal to every site and wait up to `wait` seconds for each worker's word in the rollout's event
    log (`backups_removed`, or `backups_removal_failed` with why): for a command that must say what it did."""
    tail = EventTail(rs, rid)
    send_removal(rid, sites)
    out = Removal()
    waiting = set(sites)
    deadline = Deadline(wait)
    while waiting:
        for e in tail.new():
            site = str(e.get("site", ""))
            if site not in waiting:
                continue
            if e.get("kind") == "backups_removed":
                out.removed += int(e.get("files") or 0)
                out.kept += int(e.get("kept_for_failed_rollback") or 0)
                waiting.discard(site)
            elif e.get("kind") == "backups_removal_failed":
                out.failed[site] = str(e.get("error", ""))[:300]
                waiting.discard(site)
        if not waiting or deadline.expired:
            break
        time.sleep(min(poll, max(0.0, deadline.remaining())))
    out.unanswered = sorted(waiting)
    return out
