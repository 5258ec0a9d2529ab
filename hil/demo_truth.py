"""The demo's last word: each phone's measured failover and recovery against the lab's own ground truth.

The controller never sees the lab's ground truth (it measures from its evidence alone); the demo, which owns
the lab, can hold the two side by side. A measured time agrees when it lies within the playbook's sampling
interval of the moment the lab's phone really changed its working server.
"""
from __future__ import annotations

import json
from pathlib import Path


def _truth_change(events: list[dict], server: int, after: float) -> float | None:
    """When the phone's working server first became `server` at or after `after` (the lab's clock)."""
    for e in events:
        if e.get("kind") == "working_server" and e.get("data", {}).get("server") == server and e["t"] >= after:
            return e["t"]
    return None


def compare(report: dict, truth: dict, sample: float) -> tuple[list[str], bool]:
    """(lines to print, all agree). `report`: report.json of a WAN-outage experiment; `truth`: the lab's
    `/status` answer; `sample`: the playbook's sampling interval. A report without an outage or without measured
    phones agrees with nothing."""
    outages = report.get("outages") or []
    phones = report.get("phones") or []
    if not outages or not phones or outages[0].get("end") is None:
        return [f"ground truth: nothing to compare (outages: {len(outages)}, phones: {len(phones)})"], False
    start, end = outages[0]["start"], outages[0]["end"]
    lines = [f"{'phone':<14} {'failover s':>10} {'truth s':>8} {'recovery s':>10} {'truth s':>8}  within {sample:g}s"]
    ok = True
    for p in phones:
        events = truth["ground_truth"]["phones"].get(p["mac"], {}).get("events", [])
        t_fail, t_back = _truth_change(events, 2, start), _truth_change(events, 1, end)
        true_fail = None if t_fail is None else t_fail - start
        true_back = None if t_back is None else t_back - end
        agree = all(m is not None and t is not None and abs(m - t) <= sample
                    for m, t in ((p.get("failover_s"), true_fail), (p.get("recovery_s"), true_back)))
        ok = ok and agree
        lines.append(f"{p['mac']:<14} {_s(p.get('failover_s')):>10} {_s(true_fail):>8} {_s(p.get('recovery_s')):>10} "
                     f"{_s(true_back):>8}  {'yes' if agree else 'NO'}")
    lines.append(f"ground truth: {'every phone agrees' if ok else 'DISAGREES'} within the sampling interval ({sample:g}s)")
    return lines, ok


def _s(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}"


def newest_report(report_dir: Path, since: float = 0.0) -> dict | None:
    """The newest report.json written at or after `since` (reports/ keeps earlier runs)."""
    found = sorted((p for p in report_dir.glob("*/report.json") if p.stat().st_mtime >= since),
                   key=lambda p: p.stat().st_mtime)
    return json.loads(found[-1].read_text()) if found else None


def check(report_dir: Path, truth: dict, playbook: Path, since: float = 0.0) -> bool:
    """Print the comparison for the newest report in `report_dir` written since `since` against the lab's
    `/status` answer `truth`; True when every phone agrees."""
    import yaml

    report = newest_report(report_dir, since)
    if report is None:
        print("ground truth: no report.json to compare", flush=True)
        return False
    sample = float(yaml.safe_load(playbook.read_text()).get("sample_interval") or 0.25)
    lines, ok = compare(report, truth, sample)
    print("\n".join(lines), flush=True)
    return ok
