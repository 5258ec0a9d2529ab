"""A flap step in the report: its plan beside what the router did, and each phone's counts.

report.json carries the records as `flaps` (fleet.experiment.flap_run and flap_verdict fill them); report.html
shows them under the timeline, where each cut is drawn as an outage band of its own; junit.xml has a check per
phone and flap (fleet.experiment.flap_verdict). Counts the evidence cannot give read "unknown", never a guess.
"""
from __future__ import annotations

from html import escape


def _cell(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, dict):
        return escape(", ".join(f"server {k}: {n}" for k, n in sorted(v.items())) or "-")
    if isinstance(v, float):
        return f"{v:.2f}"
    return escape(str(v))


def _plan_rows(record: dict) -> str:
    cuts = {c["index"]: c for c in record.get("cuts") or []}
    started = record.get("started") or 0.0
    rows = []
    for c in record["plan"]["cycles"]:
        done = cuts.get(c["index"]) or {}
        at = done.get("start")
        end = done.get("end")
        rows.append(f"<tr class=cut data-cycle=\"{c['index']}\"><td>{c['index']}</td><td>+{c['start']:.1f}</td>"
                    f"<td>{c['down_s']:.1f}</td><td>{c['up_s']:.1f}</td><td>{c['max_duration']}</td>"
                    f"<td>{'-' if at is None else f'+{at - started:.1f}'}</td>"
                    f"<td>{'-' if at is None or end is None else f'{end - at:.1f}'}</td>"
                    f"<td>{escape(str(done.get('outage_id') or 'not cut'))}</td></tr>")
    return "".join(rows)


def _counted(value, source: str | None) -> str:
    """A count cell: the counts, and the source they come from."""
    return _cell(value) + (f" ({escape(source)})" if source else "")


def _phone_rows(record: dict) -> str:
    rows = []
    for p in record.get("phones") or []:
        bad = p.get("within_bound") is False
        rows.append(f"<tr class={'bad' if bad else 'ok'} data-mac=\"{escape(p['mac'])}\"><td>{escape(p['mac'])}</td>"
                    f"<td>{_counted(p['registrations_lost'], p.get('lost_source'))}</td>"
                    f"<td>{_cell(p.get('registered_nowhere_s'))}</td>"
                    f"<td>{_counted(p['registers_sent'], p.get('registers_source'))}</td>"
                    f"<td>{_cell(p.get('ended_on'))}</td><td>{_cell(p.get('back_on_1_s'))}</td>"
                    f"<td title=\"{escape((p.get('bound') or {}).get('text', ''))}\">{_cell(p.get('bound_s'))}</td>"
                    f"<td>{escape(p.get('judgement') or '')}</td></tr>")
    return "".join(rows)


def html_section(doc: dict) -> str:
    """The report's flap sections ("" when the run had no flap step)."""
    out = []
    for record in doc.get("flaps") or []:
        plan = record["plan"]
        jitter = f", seed {plan['seed']}" if plan.get("seed") is not None else ""
        out.append(
            f"<h2>Flapping WAN: {escape(record['step'])}</h2><p>{len(plan['cycles'])} {escape(plan['mode'])} cut(s){jitter}; "
            f"planned {plan['duration_s']:.1f} s; every cut arms the router's dead-man's switch {plan['margin_s']:g} s past "
            f"its planned end (all fired by +{plan['deadman_deadline_s']:.0f} s at the latest, plus the cuts' own delay)"
            f"{'' if record.get('completed') else '; <b>stopped early: ' + escape(str(record.get('error') or 'run ended')) + '</b>'}</p>"
            "<table class=flap-plan><tr><th>cycle</th><th>planned start</th><th>down s</th><th>up s</th>"
            "<th>dead-man s</th><th>cut at</th><th>down for s</th><th>outage</th></tr>"
            f"{_plan_rows(record)}</table>"
            "<p>Per phone, from the first cut to the end of the last up time: registrations lost per server (one "
            "per-server source, named), seconds registered nowhere, REGISTERs sent per server (wire evidence only: "
            "\"unknown\" without it), and how it ended against its flap recovery bound (hover for its derivation).</p>"
            "<table class=flap-phones><tr><th>MAC</th><th>registrations lost</th><th>registered nowhere s</th>"
            "<th>REGISTERs sent</th><th>ended on</th><th>back on 1 after s</th><th>bound s</th><th>verdict</th></tr>"
            f"{_phone_rows(record)}</table>")
    return "".join(out)
