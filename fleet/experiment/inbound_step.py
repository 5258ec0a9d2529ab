"""The experiment step `expect: inbound_via_fallback`: the site's gateway calls each selected phone's line.

During an outage the gateway (the phones' fallback server) is the only way a call reaches a phone; a phone whose
configuration refuses it (request validation by source that does not count server 2, digest validation the
gateway cannot answer, onlySignalWithRegistered on a failed server, no registration with the gateway) misses
every call for as long as the outage lasts. The step places one call per phone through the gateway platform's own
command (fleet.experiment.inbound_answers, one task per phone, one after another), judges each answer and names
the setting behind every miss (fleet.experiment.inbound_why). Placed before the outage, the same step is the
control: a phone that misses calls then too has a problem that is not the outage's.

The runner calls `run` on each move (it never waits); the report takes `report` (JSON) and `html_section`;
the playbook checks a site with fleet.experiment.inbound_answers.check.
"""
from __future__ import annotations

from html import escape

from fleet.evidence.sources.targets import gateway_server
from fleet.experiment import tasks
from fleet.experiment.failures import StepFailed
from fleet.experiment.inbound_answers import UNKNOWN, InboundAnswer
from fleet.experiment.inbound_why import why_missed
from soundpoint import values

KIND = "inbound"


def line_user(params: dict[str, str], reg: int = 1) -> str | None:
    """The user part of line `reg`'s address (reg.x.address "1001" or "1001@example.com"); None: no such line."""
    address = str(params.get(f"reg.{reg}.address") or "").strip()
    return address.split("@", 1)[0].removeprefix("sip:") or None


def run(runner, exp: str, step) -> tuple[bool, str, dict] | None:
    """One move of the step: None while under way, else (passed, message, detail) for the runner's StepResult.
    `runner` is the ExperimentRunner: its phones, their parameters, its task sending."""
    progress = runner.pending
    assert progress is not None
    if "queue" not in progress:
        phones = runner._phones(step.phones)
        progress["queue"] = [[p.mac, line_user(runner.inv.effective_params(runner.site, p))] for p in phones]
        progress["answers"] = {}
        progress["during_outage"] = runner.open_outage is not None
    while progress["queue"]:
        mac, user = progress["queue"][0]
        if user is None:
            answer: dict = InboundAnswer(UNKNOWN, None, "the phone has no line 1 (reg.1.address)").to_dict()
        else:
            if "sent" not in progress:
                runner._send(tasks.inbound_call.s(runner.site.name, exp, mac, user, step.ring_s))
            try:
                answer = runner._answer()
                if answer is None:
                    runner.progress(f"{step.name}: calling {mac} ({len(progress['answers'])}/"
                                    f"{len(progress['answers']) + len(progress['queue'])} done)")
                    return None
            except StepFailed as exc:
                answer = InboundAnswer(UNKNOWN, None, f"the call could not be placed: {exc}").to_dict()
        progress["answers"][mac] = answer
        progress.pop("sent", None)
        progress["queue"].pop(0)
    return judge(runner, exp, step, progress["answers"], progress["during_outage"])


def judge(runner, exp: str, step, answers: dict[str, dict], during_outage: bool) -> tuple[bool, str, dict]:
    """Passed when every phone was reached; the message names each phone that was not, and why."""
    by_mac = {p.mac: p for p in runner.site.phones}
    missed: dict[str, str] = {}
    via: dict[str, int | None] = {}
    for mac, data in answers.items():
        params = runner.inv.effective_params(runner.site, by_mac[mac])
        via[mac] = gateway_server(runner.site, params, 1)
        answer = InboundAnswer.from_dict(data)
        if not answer.reached:
            missed[mac] = why_missed(params, answer, via[mac])
    when = "during the outage" if during_outage else "before any outage (control)"
    detail = {"during_outage": during_outage, "answers": answers, "missed": missed, "server": via}
    runner.store.log_event(exp, "inbound", name=step.name, **detail)
    reached = len(answers) - len(missed)
    head = f"{values.plural(len(answers), 'phone')} called through the gateway {when}: {reached} answered"
    if not missed:
        return True, head, detail
    who = "; ".join(f"{mac}: {why}" for mac, why in list(missed.items())[:20])
    more = f"; and {len(missed) - 20} more" if len(missed) > 20 else ""
    label = "would miss calls during an outage" if during_outage else "miss calls from the gateway"
    return False, f"{head}; {len(missed)} {label}: {who}{more}", detail


def missed_during_outage(result) -> dict[str, str]:
    """Per phone (MAC), why it missed the gateway's call placed during an outage (first such step's reason)."""
    out: dict[str, str] = {}
    for s in result.steps:
        if s.kind == KIND and s.detail.get("during_outage"):
            for mac, why in (s.detail.get("missed") or {}).items():
                out.setdefault(mac, why)
    return out


def report(result) -> list[dict]:
    """Per inbound step: when it ran, each phone's answer, and the phones that missed the call with why."""
    return [{"step": s.name, "passed": s.passed, "during_outage": s.detail.get("during_outage"),
             "answers": s.detail.get("answers", {}), "missed": s.detail.get("missed", {}),
             "server": s.detail.get("server", {})}
            for s in result.steps if s.kind == KIND]


def html_section(doc: dict) -> str:
    """The report's "Calls in" table: one row per phone and inbound step."""
    rows = []
    for s in doc.get("inbound") or []:
        when = "during the outage" if s.get("during_outage") else "before the outage (control)"
        for mac, answer in sorted((s.get("answers") or {}).items()):
            why = (s.get("missed") or {}).get(mac)
            said = InboundAnswer.from_dict(answer).describe()
            rows.append(f"<tr class={'bad' if why else 'ok'}><td>{escape(s['step'])}</td><td>{escape(when)}</td>"
                        f"<td>{escape(mac)}</td><td>{escape(str((s.get('server') or {}).get(mac) or '?'))}</td>"
                        f"<td>{escape(said)}</td><td>{escape(why or '')}</td></tr>")
    if not rows:
        return ""
    return ("<h2>Calls in through the gateway</h2><p>Each phone's line called by the site's gateway (its own "
            "command); a phone named here would miss calls while the gateway is its only server.</p>"
            "<table><tr><th>step</th><th>when</th><th>MAC</th><th>via server</th><th>answer</th><th>why missed</th>"
            f"</tr>{''.join(rows)}</table>")
