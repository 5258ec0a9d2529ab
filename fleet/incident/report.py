"""An incident's report: the experiment report (HTML timeline, JSON, JUnit), marked observed, not caused.

The collector stores an incident like an experiment (fleet.state.incidents);
this module measures it as an experiment is measured (fleet.experiment.verdict:
failover from the incident's start, the earliest loss of server 1 the evidence
shows; recovery from the first evidence that server 1 answers again), holds
each phone to its predicted bounds where the inventory gives its
configuration, and names the phones that never reached server 2 with the last
evidence of them.
"""
from __future__ import annotations

import json
import time
from html import escape
from pathlib import Path

from fleet.config.inventory import Inventory
from fleet.experiment import report
from fleet.experiment.phone_facts import phone_facts
from fleet.experiment.runner import ExperimentResult, StepResult
from fleet.experiment.verdict import (Expectation, OutageWindow, PhoneVerdict, Reached, first_change, judge_phone,
                                      predicted_bounds, timeline)
from fleet.phoneconf.predict import servers
from fleet.state import record
from fleet.state.incidents import IncidentStore
from fleet.state.store import RolloutStore, Store

KIND = "incident (observed, not caused)"
FAILOVER, RECOVERY = "failed over to server 2", "back on server 1"


class IncidentNotFound(LookupError):
    """No incident of that id in the store."""


def last_evidence(obs: list[dict]) -> str:
    """The newest observation of a phone, as a report names it: "wire: server 2 unregistered at 04:15:02.120"."""
    if not obs:
        return "no evidence of it during the incident"
    o = obs[-1]
    what = f"server {o['server']} {o.get('state')}" if o.get("server") is not None else f"line {o.get('state')}"
    code = f" ({o['code']})" if o.get("code") else ""
    return f"{o.get('source')}: {what}{code} at {report.clock_time(o['t'])}"


def build(store: Store, iid: str, inv: Inventory | None = None) -> dict:
    """The incident's report document (report.json's content)."""
    istore = IncidentStore(store)
    meta = istore.get(iid)
    if not meta:
        raise IncidentNotFound(iid)
    site_name, started = meta["site"], meta["started"]
    restored, finished = meta.get("restored"), meta.get("finished") or time.time()
    outage = OutageWindow(started, restored)
    window = meta.get("window_s") or 120.0
    expectations = [Expectation(FAILOVER, 2, window, "failover"), Expectation(RECOVERY, 1, finished - started, "recovery")]
    stored = {row["mac"]: row for row in store.phones(site_name)}
    site = next((s for s in inv.sites if s.name == site_name), None) if inv is not None else None
    listed = {p.mac: p for p in site.phones} if site is not None else {}
    pushed = RolloutStore(store).last_pushed(sorted(meta.get("baseline") or []))
    all_obs = {mac: istore.observations(iid, mac) for mac in meta.get("baseline") or []}
    t0 = min([started] + [o[0]["t"] for o in all_obs.values() if o])
    result = ExperimentResult(id=iid, playbook=KIND, site=site_name, started=t0, finished=finished)
    result.outages = [{"id": iid, "mode": "observed", "cut": "observed", "start": started, "end": restored,
                       "deadman": None, "restore": None, "confirmed": "observed, not caused"}]
    detected_after = round(meta.get("detected", started) - started, 3)
    result.steps = [StepResult(name="site-wide loss of server 1 found", kind="observed", passed=True,
                               elapsed_s=detected_after,
                               message=f"{meta.get('threshold')} of {len(meta.get('baseline') or [])} phones on server 1 "
                                       f"lost it within {window:g} s; found {detected_after:.1f} s after the earliest loss")]
    never = []
    moves = meta.get("phones") or {}
    for mac in sorted(meta.get("baseline") or []):
        obs = all_obs[mac]
        row = stored.get(mac) or {}
        phone = listed.get(mac)
        params = pushed.get(mac) or (inv.effective_params(site, phone) if phone is not None and inv is not None else {})
        family = phone.family.name if phone is not None else None
        pred = predicted_bounds(params, family, obs, outage) if params else None
        configured = len(servers(params)) if params else len(row.get("configured_servers") or []) or 2
        v = PhoneVerdict(mac=mac, model=row.get("model") or (phone.model if phone else ""),
                         predicted_failover_max_s=pred.failover_max_s if pred else None,
                         predicted_recovery_max_s=pred.recovery_max_s if pred else None,
                         prediction_notes=pred.notes if pred else ["no inventory given: no predicted bounds"],
                         timeline=timeline(obs, None, t0), bounds=pred.derivations if pred else {})
        if phone is not None:
            facts = phone_facts(phone, params, row)
            v.address, v.extension, v.firmware, v.firmware_from = (facts.address, facts.extension, facts.firmware,
                                                                   facts.firmware_from)
        else:
            v.address, v.firmware = row.get("address"), row.get("firmware")
        on2 = first_change(obs, 2, started)
        back = first_change(obs, 1, restored) if restored is not None else None
        kept = (moves.get(mac) or {}).get("lost_at") is None and on2 is None and all(
            o.get("working_server") == 1 for o in obs if o["t"] >= started and o.get("reg", 1) == 1)
        seen = {FAILOVER: Reached({mac: on2} if on2 is not None else {}, {mac: _last_working(obs)}),
                RECOVERY: Reached({mac: back} if back is not None else {}, {mac: _last_working(obs)})}
        judge_phone(v, configured, [] if kept else expectations, seen, obs, outage)
        if kept:
            v.reasons.append("kept server 1 throughout: it never lost it")
        elif on2 is None:
            evidence = last_evidence(obs)
            v.reasons.append(f"never reached server 2; last evidence: {evidence}")
            never.append({"mac": mac, "configured_servers": configured, "last_evidence": evidence})
        result.phones.append(v)
    result.passed = all(p.passed for p in result.phones)
    doc = report.to_dict(result)
    doc.update({"kind": "incident", "observed_not_caused": True, "status": meta.get("status"),
                "detected": meta.get("detected"), "detected_after_s": detected_after, "restored": restored,
                "closed_because": meta.get("closed_because"), "threshold": meta.get("threshold"),
                "window_s": window, "baseline": meta.get("baseline") or [], "moves": meta.get("phones") or {},
                "never_failed_over": never, "site_history": record.last_outages(store, site_name)})
    return doc


def _last_working(obs: list[dict]) -> int | None:
    return obs[-1].get("working_server") if obs else None


def html(doc: dict) -> str:
    """The experiment page, with the banner that says nobody caused this outage."""
    banner = ("<p class=\"observed\" style=\"font-size:18px;font-weight:bold\">Observed, not caused: a real outage "
              f"the collector found in its evidence ({escape(str(doc.get('closed_because') or doc.get('status')))})."
              "</p>")
    never = "".join(f"<tr class=bad><td>{escape(n['mac'])}</td><td>{n['configured_servers']}</td>"
                    f"<td>{escape(n['last_evidence'])}</td></tr>" for n in doc.get("never_failed_over") or [])
    never_html = ("<h2>Phones that never reached server 2</h2><table><tr><th>MAC</th><th>servers configured</th>"
                  f"<th>last evidence</th></tr>{never}</table>" if never else "")
    page = report.html(doc)
    page = page.replace('<p class="verdict">', banner + '<p class="verdict">', 1)
    return page.replace("<h2>Steps</h2>", never_html + "<h2>Steps</h2>", 1)


def write(doc: dict, directory: Path) -> Path:
    """report.json, junit.xml and report.html of the incident in `directory`/ID; the directory."""
    out = directory / doc["id"]
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(doc, indent=1))
    (out / "junit.xml").write_bytes(report.junit(doc).replace(b'name="experiment ', b'name="', 1))
    (out / "report.html").write_text(html(doc))
    return out
