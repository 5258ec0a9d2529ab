"""Experiment reports: report.json for scripts, junit.xml for CI, report.html for people.

The HTML page is self-contained (inline SVG and CSS, no scripts, no network):
one lane per phone, coloured by working server, the outage window shaded,
and the REGISTER outcomes the wire saw marked per server on each lane.

Every conclusion names its evidence: per phone, how many observations each
source gave; per transition of the working server, which sources saw it, what
each saw and when. Beside report.json, capture.pcap holds the SIP the wire
sources saw during the run (Wireshark opens it).

Reports are read beside PBX and router logs: the run's start and end are given
in UTC and in the local zone (name and offset, the process's TZ), the timeline
is labelled with wall-clock times, each phone with its IP address, extension
and firmware, and each predicted bound with its derivation (on hover and in a
details row). A lab's ground truth, when given (fleet.experiment.ground_truth),
stands beside the measurements.
"""
from __future__ import annotations

import base64
import ipaddress
import json
import os
import time
from collections import Counter
from dataclasses import asdict
from datetime import datetime, timezone
from html import escape
from pathlib import Path
from xml.etree import ElementTree as ET

from fleet.experiment import flap_report, ground_truth, inbound_step
from fleet.experiment.runner import ExperimentResult
from fleet.experiment.verdict import summary
import dpkt
from fleet.evidence.wire.pcap import PcapWriter
from fleet.evidence.wire.decode import LINKTYPE_RAW

PER_SERVER = ("wire", "hep", "gateway", "syslog", "poll-rest")
START = "state at start"


def _consistent(o: dict, old, new) -> bool:
    """Does observation `o` tell of the change from working server `old` to `new`?"""
    if o.get("kind", "registration") != "registration" or o.get("source") == START:
        return False
    if o.get("server") is None:
        return o.get("state") == ("unregistered" if new is None else "registered")
    if o["server"] == new:
        return o.get("state") == "registered"
    if o["server"] == old:
        return o.get("state") == "unregistered"
    return False


def transitions(lane: list[dict]) -> list[dict]:
    """Each change of the working server, with the sources that saw it: {source: seconds after the change}.
    The observation that made the change saw it; another source saw it when, before the next change, it
    observed the old server going or the new one coming (a line-level source: the line going or coming)."""
    events = [e for e in lane if e.get("kind", "registration") == "registration"]
    changes: list[tuple[int, float, object, object]] = []
    for i in range(1, len(events)):
        if events[i]["working_server"] != events[i - 1]["working_server"]:
            changes.append((i, events[i]["t"], events[i - 1]["working_server"], events[i]["working_server"]))
    out = []
    for n, (i, t, old, new) in enumerate(changes):
        end = changes[n + 1][0] if n + 1 < len(changes) else len(events)
        seen = {str(events[i].get("source")): 0.0}
        evidence = [_evidence(events[i], t)]
        for o in events[i + 1:end]:
            if _consistent(o, old, new) and str(o.get("source")) not in seen:
                seen[str(o.get("source"))] = round(max(0.0, o["t"] - t), 3)
                evidence.append(_evidence(o, t))
        out.append({"t": t, "from": old, "to": new, "sources": seen, "evidence": evidence})
    return out


def _evidence(o: dict, t0: float) -> dict:
    """One source's first sight of a change: what it saw (a response code, a state) and when."""
    return {"source": str(o.get("source")), "t": o["t"], "after_s": round(max(0.0, o["t"] - t0), 3),
            "server": o.get("server"), "state": o.get("state"), "code": o.get("code")}


# what each observation source is, as people read it (fleet.state.observe.Observation.source); "wire" is named
# after the site's capture sources (evidence_label)
SOURCE_NAMES = {"hep": "HEP capture", "gateway": "gateway bindings", "syslog": "phone syslog",
                "event": "telephone notification", "poll-rest": "REST poll", "poll-state": "state poll",
                START: "state at start"}
REASONS = {200: "OK", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found", 407: "Proxy Authentication Required",
           408: "Request Timeout", 423: "Interval Too Brief", 480: "Temporarily Unavailable", 500: "Server Internal Error",
           503: "Service Unavailable", 504: "Server Time-out"}


def evidence_label(source: str, site_sources: list[str]) -> str:
    """A source's name for people; SIP on the wire by the capture the site has (router, local or both)."""
    if source != "wire":
        return SOURCE_NAMES.get(source, source)
    captures = [s for s in ("router capture", "local capture") if s in site_sources]
    return " or ".join(captures) if captures else "SIP capture"


def _saw(e: dict) -> str:
    """What one source saw of a change, e.g. "REGISTER 200 OK" or "server 2 registered"."""
    if e["source"] in ("wire", "hep"):
        if e.get("code"):
            return f"REGISTER {e['code']} {REASONS.get(int(e['code']), '')}".rstrip()
        return "REGISTER answered" if e.get("state") == "registered" else "REGISTER unanswered"
    if e.get("server") is None:
        return f"line {e.get('state') or 'state'}"
    return f"server {e['server']} {e.get('state') or ''}".rstrip()


def phone_sources(lane: list[dict]) -> dict[str, int]:
    return dict(Counter(e["source"] for e in lane if e.get("source") and e["source"] != START))

# fleet.experiment.verdict.fallback_behaviour's values, as people read them
BEHAVIOURS = {"concurrent": "concurrent (registered with server 2 before the cut)",
              "on-failure": "on failure (registered with server 2 only after the cut)",
              "none": "never registered with server 2"}

COLOURS = {1: "#2e7d32", 2: "#f9a825", 3: "#6a1b9a", 4: "#00838f", None: "#c62828"}
UNKNOWN = "#e0e0e0"   # before the first observation of a phone


def wall_clock(t: float) -> dict:
    """`t` as PBX and router logs print it: UTC and the local zone (this process's TZ), with its name and offset."""
    utc = datetime.fromtimestamp(t, timezone.utc)
    local = datetime.fromtimestamp(t, timezone.utc).astimezone()
    offset = local.strftime("%z")
    return {"utc": utc.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "local": local.isoformat(timespec="milliseconds"), "zone": local.tzname() or "",
            "utc_offset": f"{offset[:3]}:{offset[3:]}" if offset else "+00:00"}


def to_dict(result: ExperimentResult) -> dict:
    failovers = [p.failover_s for p in result.phones if p.failover_s is not None]
    recoveries = [p.recovery_s for p in result.phones if p.recovery_s is not None]
    return {
        "id": result.id, "playbook": result.playbook, "site": result.site, "passed": result.passed,
        "started": result.started, "finished": result.finished, "errors": result.errors, "outages": result.outages,
        "wall_clock": {"started": wall_clock(result.started), "finished": wall_clock(result.finished)},
        "interrupted": result.interrupted,
        "steps": [{"name": s.name, "kind": s.kind, "passed": s.passed, "elapsed_s": s.elapsed_s, "message": s.message}
                  for s in result.steps],
        "phones": [asdict(p) | {"sources": phone_sources(p.timeline), "transitions": transitions(p.timeline)}
                   for p in result.phones],
        "capture": capture_summary(result.capture, result.capture_left_out),
        "unobservable": list(result.unobservable),
        "evidence_errors": list(result.evidence_errors),
        "evidence_foreign": list(result.evidence_foreign),
        "evidence_sources": list(result.evidence_sources),
        "inbound": inbound_step.report(result),   # calls placed by the gateway: who would miss calls, and why
        "ground_truth": None,      # fleet.experiment.ground_truth.compare, when a lab's truth is given
        "flaps": list(result.flaps),   # each flap step's plan, cuts and per-phone counts (fleet.experiment.flap_report)
        "summary": {"phones": len(result.phones), "phones_passed": sum(p.passed for p in result.phones),
                    "failover_s": summary(failovers), "recovery_s": summary(recoveries)},
    }


def junit(doc: dict) -> bytes:
    suite = ET.Element("testsuite", name=f"experiment {doc['playbook']}", timestamp=time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(doc["started"])),
                       time=f"{doc['finished'] - doc['started']:.3f}")
    props = ET.SubElement(suite, "properties")
    for name, value in junit_properties(doc):
        ET.SubElement(props, "property", name=name, value=value)
    cases = failures = 0
    for step in doc["steps"]:
        case = ET.SubElement(suite, "testcase", classname=f"{doc['site']}.steps", name=step["name"], time=f"{step['elapsed_s']:.3f}")
        cases += 1
        if not step["passed"]:
            failures += 1
            ET.SubElement(case, "failure", message=step["message"][:500]).text = step["message"]
    for phone in doc["phones"]:
        for check in phone["checks"]:
            case = ET.SubElement(suite, "testcase", classname=f"{doc['site']}.{phone['mac']}", name=check["name"])
            cases += 1
            if not check["passed"]:
                failures += 1
                ET.SubElement(case, "failure", message=check["message"][:500]).text = check["message"]
    for err in doc["errors"]:
        case = ET.SubElement(suite, "testcase", classname=f"{doc['site']}.run", name="run")
        cases += 1
        failures += 1
        ET.SubElement(case, "error", message=err[:500]).text = err
    suite.set("tests", str(cases))
    suite.set("failures", str(failures))
    return ET.tostring(suite, encoding="utf-8", xml_declaration=True)


def junit_properties(doc: dict) -> list[tuple[str, str]]:
    """The run's wall-clock times and each phone's identity, as JUnit properties a CI page lists."""
    clock = doc.get("wall_clock") or {}
    out = [(f"{edge}_{k}", clock[edge][k]) for edge in ("started", "finished") if edge in clock for k in ("utc", "local")]
    for p in doc["phones"]:
        out.append((f"phone.{p['mac']}", phone_identity(p)))
    return out


def phone_identity(p: dict) -> str:
    """e.g. "192.168.10.21, extension 1001, VVX 410, firmware 5.9.0" (firmware as `firmware_text` says it)."""
    return (f"{p.get('address') or 'address unknown'}, extension {p.get('extension') or 'unknown'}, "
            f"{p.get('model') or 'model unknown'}, firmware {firmware_text(p)}")


def firmware_text(p: dict) -> str:
    """The firmware as the report shows it: never "None"; where it came from when not the phone itself."""
    if not p.get("firmware"):
        return "unknown"
    return p["firmware"] + (" (inventory's firmware_version)" if p.get("firmware_from") == "inventory" else "")


def clock_time(t: float, ms: bool = True) -> str:
    """A wall-clock time of day in the local zone, as the timeline labels it."""
    local = datetime.fromtimestamp(t, timezone.utc).astimezone()
    return local.strftime("%H:%M:%S.%f")[:-3] if ms else local.strftime("%H:%M:%S")


def timeline_svg(doc: dict, width: int = 900, lane: int = 18) -> str:
    t0 = doc["started"]
    t1 = max(doc["finished"], t0 + 1)
    label_w = 130
    scale = (width - label_w - 30) / (t1 - t0)      # room on the right for the last tick's label
    x = lambda t: label_w + (min(max(t, t0), t1) - t0) * scale  # noqa: E731
    height = 30 + lane * len(doc["phones"]) + 32    # tick labels: wall clock, then seconds into the run
    parts = [f'<svg id="timeline" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" '
             f'aria-label="working server per phone over time">']
    for i, phone in enumerate(doc["phones"]):
        y = 22 + i * lane
        parts.append(f'<text x="2" y="{y + lane - 6}" font-size="11" font-family="monospace">{escape(phone["mac"])}</text>')
        events = [e for e in phone["timeline"] if e.get("kind", "registration") == "registration"]
        current, since = "unknown", t0
        for e in events + [{"t": t1, "working_server": "end"}]:
            if e["working_server"] != current:
                if e["t"] > since:
                    colour = UNKNOWN if current == "unknown" else COLOURS.get(current, "#455a64")
                    parts.append(f'<rect class="lane" data-server="{current}" x="{x(since):.1f}" y="{y}" '
                                 f'width="{max(x(e["t"]) - x(since), 0.5):.1f}" height="{lane - 4}" fill="{colour}">'
                                 f'<title>{"not yet observed" if current == "unknown" else f"server {current}"} '
                                 f'from {clock_time(since)} to {clock_time(e["t"])}</title></rect>')
                current, since = e["working_server"], e["t"]
    lanes_h = lane * len(doc["phones"]) + 4
    for i, phone in enumerate(doc["phones"]):
        parts.extend(register_marks(phone, 22 + i * lane, lane, x))
    for o in doc["outages"]:
        if o.get("wan_cut") == "no":   # the router never cut (not reached, or cancelled first): no outage to draw
            continue
        end = o["end"] or t1
        parts.append(f'<rect class="outage" x="{x(o["start"]):.1f}" y="18" width="{max(x(end) - x(o["start"]), 1):.1f}" '
                     f'height="{lanes_h}" fill="#37474f" fill-opacity="0.18" stroke="#37474f" stroke-dasharray="4 3">'
                     f'<title>{escape(o["mode"])} outage</title></rect>'
                     f'<text x="{x(o["start"]) + 3:.1f}" y="14" font-size="10">{escape(o["mode"])} outage</text>')
    span = t1 - t0
    step = next(s for s in (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 1800, 3600) if span / s <= 12)
    for k in range(0, int(span) + 1, step):
        parts.append(f'<line x1="{x(t0 + k):.1f}" y1="{18 + lanes_h}" x2="{x(t0 + k):.1f}" y2="{22 + lanes_h}" stroke="#555"/>'
                     f'<text class="tick" x="{x(t0 + k):.1f}" y="{height - 16}" font-size="10" text-anchor="middle">'
                     f'{clock_time(t0 + k, ms=False)}</text><text x="{x(t0 + k):.1f}" y="{height - 4}" font-size="10" '
                     f'fill="#555" text-anchor="middle">+{k} s</text>')
    parts.append("</svg>")
    return "".join(parts)


def register_marks(phone: dict, y: float, lane: int, x) -> list[str]:
    """A mark per REGISTER outcome the wire or HEP saw (and per change of a gateway binding): server 1 at the
    top of the lane, server 2 below it; green registered, red refused or unanswered."""
    out: list[str] = []
    last: dict[tuple, str] = {}
    for e in phone.get("timeline", []):
        server, source = e.get("server"), e.get("source")
        if server is None or source not in PER_SERVER or e.get("kind", "registration") != "registration":
            continue
        if source not in ("wire", "hep") and last.get((server, source)) == e.get("state"):
            continue     # a poll repeating the same state is no outcome
        last[(server, source)] = e.get("state")
        ok = e.get("state") == "registered"
        code = e.get("code")
        what = (f"{clock_time(e['t'])} server {server}: "
                f"{code or ('registered' if ok else 'no answer' if source in ('wire', 'hep') else 'unregistered')} ({source})")
        cy = y + 3 + (min(int(server), 4) - 1) * (lane - 6) / 3
        out.append(f'<circle class="register" data-server="{server}" data-source="{escape(str(source))}" '
                   f'data-code="{code or ""}" cx="{x(e["t"]):.1f}" cy="{cy:.1f}" r="2.5" '
                   f'fill="{"#1b5e20" if ok else "#b71c1c"}" stroke="white" stroke-width="0.6">'
                   f'<title>{escape(what)}</title></circle>')
    return out


def capture_summary(rows: list[dict], left_out: int = 0) -> dict:
    """What capture.pcap holds; `left_out`: datagrams not kept because the capture reached its byte cap."""
    return {"file": "capture.pcap" if rows else None, "datagrams": len(rows), "left_out": left_out,
            "sources": dict(Counter(r.get("source", "?") for r in rows))}


def write_capture(rows: list[dict], path: Path) -> int:
    """The SIP datagrams the wire sources saw, as a pcap of raw IP packets (one link type for every source:
    the router's Ethernet, a mirror port's, HEP's addresses). Returns how many were written."""

    n = 0
    with open_private(path) as f:
        w = PcapWriter(f, LINKTYPE_RAW)
        for r in sorted(rows, key=lambda r: r["t"]):
            try:
                src, dst = ipaddress.ip_address(r["src"][0]), ipaddress.ip_address(r["dst"][0])
                payload = base64.b64decode(r["payload"])
                udp = dpkt.udp.UDP(sport=int(r["src"][1]), dport=int(r["dst"][1]), data=payload)
                udp.ulen = 8 + len(payload)
                if src.version == 4 and dst.version == 4:
                    ip = dpkt.ip.IP(src=src.packed, dst=dst.packed, p=17, data=udp)
                    ip.len = 20 + udp.ulen
                else:
                    ip = dpkt.ip6.IP6(src=src.packed, dst=dst.packed, nxt=17, hlim=64, data=udp, plen=udp.ulen)
                frame = bytes(ip)
            except (KeyError, ValueError, TypeError, IndexError, dpkt.Error):
                continue        # a damaged row never stops the report
            w.write(float(r["t"]), frame)
            n += 1
    return n


def html(doc: dict) -> str:
    verdict = "PASSED" if doc["passed"] else "FAILED"
    phones_header, rows = phone_table(doc)
    steps = "".join(f"<tr class={'ok' if s['passed'] else 'bad'}><td>{escape(s['name'])}</td><td>{s['elapsed_s']:.1f}</td>"
                    f"<td>{'pass' if s['passed'] else 'FAIL'}</td><td>{escape(s['message'])}</td></tr>" for s in doc["steps"])
    legend = " ".join(f'<span style="background:{c};padding:0 8px">&nbsp;</span> {"no working server" if k is None else f"server {k}"}'
                      for k, c in COLOURS.items()) + f' <span style="background:{UNKNOWN};padding:0 8px">&nbsp;</span> not yet observed' 
    outages = "".join(
        f"<tr class={'ok' if str(o.get('confirmed', '')).startswith(('restored', 'cancelled')) else 'bad'}>"
        f"<td>{escape(str(o.get('id', '')))}</td><td>{escape(o['mode'])}</td><td>{escape(str(o.get('cut', '')))}</td>"
        f"<td>{escape(str(o.get('deadman') or 'none'))}</td><td>{escape(str(o.get('restore') or '-'))}</td>"
        f"<td>{escape(str(o.get('confirmed', '')))}</td></tr>" for o in doc["outages"])
    unseen = "".join(f"<tr><td>{escape(str(u.get('mac', '')))}</td><td>{escape(str(u.get('server', '')))}</td>"
                     f"<td>{escape(str(u.get('address', '')))}</td><td>{escape(str(u.get('reason', '')))}: "
                     f"{escape(str(u.get('why', '')))}</td></tr>" for u in doc.get("unobservable") or [])
    unseen_html = ("<h2>Not observable on the wire</h2><p>No wire source of the site can see these servers' REGISTERs; "
                   "their state comes from other sources, and silence on the wire says nothing about them.</p>"
                   f"<table><tr><th>MAC</th><th>server</th><th>address</th><th>why</th></tr>{unseen}</table>"
                   if unseen else "")
    failing = "".join(f"<tr class=bad><td>{escape(str(e.get('source', '')))}</td><td>{escape(str(e.get('error', '')))}</td></tr>"
                      for e in doc.get("evidence_errors") or [])
    failing_html = (f"<h2>Evidence sources not working</h2><table><tr><th>source</th><th>why</th></tr>{failing}</table>"
                    if failing else "")
    foreign = "".join(f"<tr class=bad><td>{escape(str(f.get('source', '')))}</td><td>{escape(str(f.get('total', '')))}</td>"
                      f"<td>{escape(', '.join(f'{a}: {n}' for a, n in sorted((f.get('foreign') or {}).items())))}</td></tr>"
                      for f in doc.get("evidence_foreign") or [])
    foreign_html = ("<h2>Foreign SIP</h2><p>Messages naming the site's phones from addresses that are not theirs nor "
                    "allowed by the inventory (allow_from), since the collector started: counted, never taken as a "
                    "phone's state.</p><table><tr><th>source</th><th>messages</th><th>from (address: count)</th></tr>"
                    f"{foreign}</table>" if foreign else "")
    s = doc["summary"]
    history_html = site_history_html(doc.get("site_history") or [])
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>{escape(doc['playbook'])}: {verdict}</title>
<style>body{{font-family:sans-serif;margin:20px}} table{{border-collapse:collapse}} td,th{{border:1px solid #ccc;padding:3px 8px;font-size:13px}}
tr.bad td{{background:#ffebee}} td.bound{{text-decoration:underline dotted;cursor:help}}
tr.how td{{border-top:none;font-size:12px;color:#333}} .verdict{{font-size:22px;font-weight:bold;color:{'#2e7d32' if doc['passed'] else '#c62828'}}}</style></head>
<body><h1>{escape(doc['playbook'])} on site {escape(doc['site'])}</h1>
<p class="verdict">{verdict}</p>{wall_clock_html(doc)}<p>experiment {escape(doc['id'])}; {s['phones_passed']}/{s['phones']} phones passed;
failover p50 {_fmt(s['failover_s']['p50'])} s, p95 {_fmt(s['failover_s']['p95'])} s, max {_fmt(s['failover_s']['max'])} s;
recovery p50 {_fmt(s['recovery_s']['p50'])} s, p95 {_fmt(s['recovery_s']['p95'])} s, max {_fmt(s['recovery_s']['max'])} s</p>
{''.join(f'<p class="bad">{escape(e)}</p>' for e in doc['errors'])}
<h2>Timeline: working server per phone</h2><p>times of day {escape(_zone(doc))}; {legend}; hatched band: outage; dots: REGISTER outcomes per server
(upper row server 1, lower row server 2; green registered, red refused or unanswered)</p>{timeline_svg(doc)}
{flap_report.html_section(doc)}
<h2>Outages: what the router confirmed</h2><table><tr><th>outage</th><th>mode</th><th>cut</th><th>dead-man's switch</th><th>restore</th><th>confirmed</th></tr>{outages}</table>
<h2>Steps</h2><table><tr><th>step</th><th>s</th><th>result</th><th>detail</th></tr>{steps}</table>
<h2>Phones</h2>{truth_note(doc)}<table id="phones">{phones_header}{rows}</table>
{inbound_step.html_section(doc)}{unseen_html}{failing_html}{foreign_html}{history_html}
<p>SIP capture: {escape(str((doc.get('capture') or {}).get('file') or 'none kept'))}
({(doc.get('capture') or {}).get('datagrams', 0)} datagrams, \
{(doc.get('capture') or {}).get('left_out', 0)} left out over its byte cap)</p>
</body></html>"""


def site_history_html(history: list[dict]) -> str:
    """"This site's last 10 outages": experiments and incidents, newest first (the survivability record)."""
    if not history:
        return ""
    rows = "".join(f"<tr class={'bad' if h.get('failed') else 'ok'}><td>{escape(str(h.get('origin', '')))}</td>"
                   f"<td>{escape(str(h.get('id', '')))}</td><td>{escape(clock_time(float(h.get('t') or 0), ms=False))}"
                   f"</td><td>{h.get('phones', 0)}</td><td>{h.get('failed', 0)}</td>"
                   f"<td>{_fmt(h.get('failover_max_s'))}</td><td>{_fmt(h.get('recovery_max_s'))}</td></tr>"
                   for h in history)
    return ("<h2 id=\"site-history\">This site's last 10 outages</h2><p>Experiments that cut the WAN and incidents "
            "(real outages, observed, not caused), newest first; `fleet record` has the figures.</p><table><tr>"
            "<th>origin</th><th>id</th><th>started</th><th>phones</th><th>failed</th><th>failover max s</th>"
            f"<th>recovery max s</th></tr>{rows}</table>")


def wall_clock_html(doc: dict) -> str:
    """The run's start and end in UTC and in the local zone, as <time> elements (their datetime: ISO 8601)."""
    clock = doc.get("wall_clock") or {"started": wall_clock(doc["started"]), "finished": wall_clock(doc["finished"])}

    def edge(c: dict) -> str:
        return (f'<time datetime="{escape(c["utc"])}">{escape(c["utc"].replace("T", " ").replace("Z", " UTC"))}</time> '
                f'({escape(c["local"].replace("T", " ")[:23])} {escape(c["zone"])}, UTC{escape(c["utc_offset"])})')
    return (f'<p id="wall-clock">started {edge(clock["started"])}; finished {edge(clock["finished"])}</p>')


def _zone(doc: dict) -> str:
    c = (doc.get("wall_clock") or {}).get("started") or wall_clock(doc["started"])
    return f"{c['zone']} (UTC{c['utc_offset']})"


def phone_table(doc: dict) -> tuple[str, str]:
    """(header row, rows) of the phones' table: who each phone is, measured against predicted (each bound's
    derivation on hover and in a details row under the phone), the lab's truth where given, and the evidence."""
    truth = {t["mac"]: t for t in (doc.get("ground_truth") or {}).get("phones", [])}
    with_truth = bool(doc.get("ground_truth"))
    measure_cols = ["failover s"] + (["truth s", "difference s"] if with_truth else []) + ["predicted max"]
    measure_cols += ["recovery s"] + (["truth s", "difference s"] if with_truth else []) + ["predicted max"]
    cols = ["MAC", "IP", "extension", "model", "firmware", *measure_cols, "fallback used", "result", "why",
            "evidence of each change"]
    header = "<tr>" + "".join(f"<th>{escape(c)}</th>" for c in cols) + "</tr>"
    rows = []
    for p in doc["phones"]:
        cells = [p["mac"], p.get("address") or "unknown", p.get("extension") or "unknown", p.get("model") or "unknown",
                 firmware_text(p)]
        row = "".join(f"<td>{escape(str(c))}</td>" for c in cells)
        for measure in ("failover", "recovery"):
            row += f'<td class="measured" data-measure="{measure}">{_measured(p, measure)}</td>'
            if with_truth:
                row += _truth_cells(truth.get(p["mac"]), measure)
            row += _bound_cell(p, measure)
        row += (f"<td>{escape(BEHAVIOURS.get(p.get('failover_behaviour'), '-'))}</td>"
                f"<td>{'pass' if p['passed'] else 'FAIL'}</td><td>{escape('; '.join(p['reasons'] + _judged(p)))}</td>"
                f"<td class=evidence>{escape(evidence_text(p, doc.get('evidence_sources') or []))}</td>")
        rows.append(f"<tr class={'ok' if p['passed'] else 'bad'} data-mac=\"{escape(p['mac'])}\">{row}</tr>"
                    f"<tr class=how data-mac=\"{escape(p['mac'])}\"><td colspan={len(cols)}><details>"
                    f"<summary>how {escape(p['mac'])}'s bounds were derived</summary>{_derivations(p)}</details></td></tr>")
    return header, "".join(rows)


def bound_text(p: dict, measure: str) -> str:
    """A bound's derivation in one line, or why there is none."""
    how = (p.get("bounds") or {}).get(measure)
    if how:
        return how["text"]
    notes = [n.split(":", 1)[1].strip() for n in p.get("prediction_notes") or [] if n.startswith(measure + ":")]
    return f"no bound: {notes[0]}" if notes else "no bound"


def _bound_cell(p: dict, measure: str) -> str:
    return (f'<td class="bound" data-measure="{measure}" title="{escape(bound_text(p, measure))}">'
            f'{_fmt(p.get(f"predicted_{measure}_max_s"))}</td>')


def _derivations(p: dict) -> str:
    return "".join(f'<p class="derivation" data-measure="{m}">{m}: {escape(bound_text(p, m))}</p>'
                   for m in ("failover", "recovery"))


def _truth_cells(row: dict | None, measure: str) -> str:
    if row is None or not row.get("known"):
        return '<td class="truth">not in the ground truth</td><td>-</td>'
    m = row[measure]
    diff = m["difference_s"]
    return (f'<td class="truth" data-measure="{measure}">{_fmt(m["truth_s"])}</td>'
            f'<td class="difference" data-measure="{measure}">{signed(diff)}</td>')


def signed(v: float | None) -> str:
    """A difference with its sign, to the hundredth; one that rounds to nothing is 0.00 (never "-0.00")."""
    if v is None:
        return "-"
    return "0.00" if round(v, 2) == 0 else f"{v:+.2f}"


def truth_note(doc: dict) -> str:
    """Where the ground truth came from: the lab's, never fleet's own knowledge."""
    gt = doc.get("ground_truth")
    if not gt:
        return ""
    return (f'<p id="ground-truth">Ground truth from {escape(str(gt.get("file")))} (the lab\'s own record of when each '
            f"phone changed its working server); difference = measured - truth.</p>")


def evidence_text(p: dict, site_sources: list[str]) -> str:
    """Per change of the working server, which sources saw it, what each saw and when, e.g. "server 1 -> server 2
    at 12:03:04.120: evidence: router capture (REGISTER 200 OK at 12:03:04.120), telephone notification (line
    registered at 12:03:04.410, +0.29 s)"."""
    parts = []
    for tr in p.get("transitions", []):
        said = []
        for i, e in enumerate(tr.get("evidence") or _legacy_evidence(tr)):
            when = f"at {clock_time(e['t'])}" + (f", +{e['after_s']:g} s" if i else "")
            said.append(f"{evidence_label(e['source'], site_sources)} ({_saw(e)} {when})")
        parts.append(f"{_server(tr['from'])} -> {_server(tr['to'])} at {clock_time(tr['t'])}: evidence: {', '.join(said)}")
    return "; ".join(parts) or "no change"


def _legacy_evidence(tr: dict) -> list[dict]:
    """A report.json written before transitions carried their evidence: the sources and delays it has."""
    return [{"source": src, "t": tr["t"] + d, "after_s": d, "server": None, "state": None, "code": None}
            for src, d in tr["sources"].items()]


def _server(n) -> str:
    return "no server" if n is None else f"server {n}"


def _measured(p: dict, measure: str) -> str:
    """A measured time, or the interval the evidence allows where it only bounds the moment."""
    interval = p.get(f"{measure}_interval_s")
    return f"{interval[0]:.2f} to {interval[1]:.2f}" if interval else _fmt(p.get(f"{measure}_s"))


def _judged(p: dict) -> list[str]:
    """What the verdict said of each bounded measure: within bound, over bound, undetermined (and by how much)."""
    return [f"{measure}: {said}" for measure, said in (p.get("judgement") or {}).items()]


def _fmt(v) -> str:
    return "-" if v is None else f"{v:.2f}"


def open_private(path: Path):
    """`path` opened for writing, readable by its owner only (0600, also when it existed with a wider mode), never
    through a symlink: a capture holds every phone's REGISTERs, digest responses included."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    os.fchmod(fd, 0o600)
    return os.fdopen(fd, "wb")


def write(result: ExperimentResult, directory: Path, site_history: list[dict] | None = None) -> dict:
    """report.json, junit.xml, report.html and, when the wire sources kept SIP, capture.pcap (0600). The report
    pages hold no SIP message (counts, times and response codes only), so they keep the usual mode. A lab's
    ground truth comes after the run (`rewrite`): only then does the lab's record hold the run.
    `site_history`: the site's last outages (fleet.state.record.last_outages), shown under the phones."""
    doc = to_dict(result)
    doc["site_history"] = list(site_history or [])
    directory.mkdir(parents=True, exist_ok=True)
    if result.capture:
        doc["capture"]["written"] = write_capture(result.capture, directory / "capture.pcap")
    _write_pages(doc, directory)
    return doc


class ReportError(ValueError):
    """A written report that cannot be read back (names the file)."""


def rewrite(directory: Path, truth: Path | None = None) -> dict:
    """The pages of a written report again from its report.json (after the run: with a lab's ground truth
    beside the measurements). Nothing is written when the truth file or report.json cannot be read."""
    source = directory / "report.json"
    try:
        doc = json.loads(source.read_text())
    except (OSError, UnicodeDecodeError) as exc:
        raise ReportError(f"{source}: cannot read the report ({exc.__class__.__name__}: {exc.strerror or exc})") from None
    except json.JSONDecodeError as exc:
        raise ReportError(f"{source}:{exc.lineno}: not JSON ({exc.msg})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("phones"), list) or not all(
            isinstance(doc.get(k), (int, float)) for k in ("started", "finished")):
        raise ReportError(f"{source}: not an experiment report (phones, started or finished missing)")
    if truth is not None:
        doc["ground_truth"] = ground_truth.compare(doc, ground_truth.load(truth), str(truth))
    doc.setdefault("wall_clock", {"started": wall_clock(doc["started"]), "finished": wall_clock(doc["finished"])})
    _write_pages(doc, directory)
    return doc


def _write_pages(doc: dict, directory: Path) -> None:
    (directory / "report.json").write_text(json.dumps(doc, indent=1))
    (directory / "junit.xml").write_bytes(junit(doc))
    (directory / "report.html").write_text(html(doc))
