"""A lab's ground truth beside an experiment's measurements.

fleet never knows it runs against a lab: it measures from its evidence alone.
A lab that knows when each phone really changed its working server can hand
that over as a file, and the report (`fleet experiment report DIR
--ground-truth FILE`) shows measured against true per phone, and the
difference. The file's shape (what `hil status --json` prints; other keys
are ignored):

    {"ground_truth": {"phones": {"<mac>": {"events": [
        {"t": <wall clock, s since the epoch>, "kind": "working_server", "data": {"server": <n or null>}}, ...]}}}}

A phone's true failover is its first change to server 2 at or after the
outage's start; its true recovery, its first change back to server 1 at or
after the restore.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path


class GroundTruthError(ValueError):
    """A ground truth file that cannot be read as the documented shape: names the file and the field."""


@dataclass(frozen=True)
class Change:
    t: float
    server: int | None


def load(path: Path) -> dict[str, list[Change]]:
    """Each phone's working-server changes (MAC in lower case, oldest first) from the file at `path`."""
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise GroundTruthError(f"{path}: cannot read the ground truth file ({exc.__class__.__name__}: {exc})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise GroundTruthError(f"{path}:{exc.lineno}: not JSON ({exc.msg}, column {exc.colno})") from None
    phones = (data.get("ground_truth") or {}).get("phones") if isinstance(data, dict) and isinstance(
        data.get("ground_truth"), dict) else None
    if not isinstance(phones, dict):
        raise GroundTruthError(f"{path}: ground_truth.phones: missing or not an object (expected the shape "
                               f"`hil status --json` prints)")
    out: dict[str, list[Change]] = {}
    for mac, phone in phones.items():
        events = phone.get("events") if isinstance(phone, dict) else None
        if not isinstance(events, list):
            raise GroundTruthError(f"{path}: ground_truth.phones.{mac}.events: missing or not a list")
        changes = []
        for i, e in enumerate(events):
            if not isinstance(e, dict) or e.get("kind") != "working_server":
                continue
            where = f"{path}: ground_truth.phones.{mac}.events[{i}]"
            t, server = e.get("t"), (e.get("data") or {}).get("server") if isinstance(e.get("data"), dict) else None
            if isinstance(t, bool) or not isinstance(t, (int, float)):
                raise GroundTruthError(f"{where}.t: {t!r} is not a time in seconds since the epoch")
            if server is not None and (isinstance(server, bool) or not isinstance(server, int)):
                raise GroundTruthError(f"{where}.data.server: {server!r} is not a server number or null")
            changes.append(Change(float(t), server))
        out[str(mac).lower().replace(":", "")] = sorted(changes, key=lambda c: c.t)
    return out


def first_change(changes: list[Change], server: int, after: float) -> float | None:
    """When the working server first became `server` at or after `after`."""
    return next((c.t for c in changes if c.server == server and c.t >= after), None)


def compare(doc: dict, truth: dict[str, list[Change]], source: str) -> dict:
    """The report's `ground_truth` section: per phone measured, true and difference (measured - true) for failover
    and recovery, against the run's first outage that cut. `source`: the file, as the report names it."""
    cut = [o for o in doc.get("outages") or [] if o.get("cut") in ("cut", "already-cut")]   # as the verdict's
    start, end = (cut[0]["start"], cut[0].get("end")) if cut else (None, None)
    phones = []
    for p in doc.get("phones") or []:
        changes = truth.get(p["mac"])
        row: dict = {"mac": p["mac"], "known": changes is not None}
        for measure, server, ref in (("failover", 2, start), ("recovery", 1, end)):
            at = first_change(changes or [], server, ref) if ref is not None else None
            true_s = None if at is None else round(at - ref, 3)
            measured = p.get(f"{measure}_s")
            row[measure] = {"measured_s": measured, "truth_s": true_s,
                            "difference_s": None if measured is None or true_s is None else round(measured - true_s, 3)}
        phones.append(row)
    return {"file": source, "outage_start": start, "outage_end": end, "phones": phones}
