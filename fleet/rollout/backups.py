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

from fleet.phoneconf import polycom
from fleet.drivers.publish import Publisher

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
            if record.get(f"backed_up:{name}") == "yes" or record.get(f"backing_up:{name}"):
                if name == named_master:
                    shared_backup = True
                    continue
                pub.delete(backup_name(name, rid))
                removed += 1
    if shared_backup and not kept:
        pub.delete(backup_name(named_master, rid))
        removed += 1
    return removed, kept
