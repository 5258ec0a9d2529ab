"""One scrape's snapshot (fleet.state.scrape) as Prometheus metric families: the names, labels and meanings.

Pure: no Redis, no HTTP, so every rule here is tested on a snapshot built by hand. A phone's site-level counts
are its registration 1's (the line `fleet status` shows first); per phone, every line observed.

- registered with a server: its per-server state is `registered` and the binding has not lapsed (its granted
  expiry is not past); servers with no evidence yet are left out rather than exported as 0.
- on fallback: the working server is known and is not the first server the phone registers with.
- registered nowhere: observed, no server registered (unlapsed) and no working server (a line-level source that
  says the line is up makes a working server: then it is registered somewhere).
"""
from __future__ import annotations

import math
from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

from fleet.state.scrape import Snapshot

ROLLOUT_STATES = ("done", "failed", "remaining")


def registered(server: dict, now: float) -> bool:
    """Registered with this server now: by its state, and its binding not lapsed unrefreshed."""
    return server.get("state") == "registered" and not (server.get("expires_at") and server["expires_at"] < now)


def first_server(row: dict) -> int:
    """The first server registration 1 registers with (its configured servers, else what was observed; 1 if none)."""
    indices = [s["index"] for s in row.get("servers") or [] if s.get("register", True)]
    return min(indices) if indices else 1


def on_fallback(row: dict) -> bool:
    ws = row.get("working_server")
    return ws is not None and ws != first_server(row)


def registered_nowhere(row: dict, now: float) -> bool:
    return (row.get("observed_at") is not None and row.get("working_server") is None
            and not any(registered(s, now) for s in row.get("servers") or []))


def _lines(row: dict) -> Iterator[tuple[str, int | None, list[dict]]]:
    """(line, working server, servers) for registration 1 and every other registration observed."""
    yield "1", row.get("working_server"), row.get("servers") or []
    for reg, line in sorted((row.get("lines") or {}).items()):
        yield str(reg), line.get("working_server"), line.get("servers") or []


def phone_families(snap: Snapshot) -> list[Metric]:
    reg = GaugeMetricFamily("fleet_phone_server_registered", "1 while the phone's line is registered with the "
                            "server (per-server evidence, binding not lapsed), 0 when it is not; absent: no evidence",
                            labels=["site", "phone", "line", "server"])
    working = GaugeMetricFamily("fleet_phone_working_server", "the server the phone's line works with (R4: the "
                                "first one registered); 0: none known", labels=["site", "phone", "line"])
    for site in snap.sites:
        for row in snap.rows.get(site, []):
            mac = str(row.get("mac"))
            for line, ws, servers in _lines(row):
                for s in servers:
                    if s.get("state") in ("registered", "unregistered"):
                        reg.add_metric([site, mac, line, str(s["index"])], 1.0 if registered(s, snap.t) else 0.0)
                working.add_metric([site, mac, line], float(ws or 0))
    return [reg, working]


def site_families(snap: Snapshot) -> list[Metric]:
    phones = GaugeMetricFamily("fleet_site_phones", "phones of the site in the inventory", labels=["site"])
    nowhere = GaugeMetricFamily("fleet_site_phones_registered_nowhere", "phones observed whose line 1 is "
                                "registered with no server", labels=["site"])
    fallback = GaugeMetricFamily("fleet_site_phones_on_fallback", "phones whose line 1 works with a server other "
                                 "than the first it registers with", labels=["site"])
    unobserved = GaugeMetricFamily("fleet_site_phones_unobserved", "phones no evidence source has reported yet",
                                   labels=["site"])
    incidents = GaugeMetricFamily("fleet_incidents_open", "outage incidents open at the site", labels=["site"])
    never = GaugeMetricFamily("fleet_incident_phones_never_failed_over", "phones of the site's open incidents that "
                              "have not reached their fallback server", labels=["site"])
    for site in snap.sites:
        rows = snap.rows.get(site, [])
        phones.add_metric([site], len(rows))
        nowhere.add_metric([site], sum(registered_nowhere(r, snap.t) for r in rows))
        fallback.add_metric([site], sum(on_fallback(r) for r in rows))
        unobserved.add_metric([site], sum(r.get("observed_at") is None for r in rows))
        found = snap.incidents.get(site, [])
        incidents.add_metric([site], len(found))
        never.add_metric([site], sum(i.never_failed_over for i in found))
    return [phones, nowhere, fallback, unobserved, incidents, never]


def _unique(names: list[str]) -> list[str]:
    """Source labels made unique within a site (two router captures are both `router capture`)."""
    seen: dict[str, int] = {}
    out = []
    for n in names:
        seen[n] = seen.get(n, 0) + 1
        out.append(n if seen[n] == 1 else f"{n} #{seen[n]}")
    return out


def evidence_families(snap: Snapshot) -> list[Metric]:
    up = GaugeMetricFamily("fleet_evidence_source_up", "1 while the per-server evidence source works (the "
                           "collector's report), 0 while it fails", labels=["site", "source"])
    report_age = GaugeMetricFamily("fleet_evidence_report_age_seconds", "age of the collector's evidence report "
                                   "(rewritten at least every minute while the collector runs)", labels=["site"])
    age = GaugeMetricFamily("fleet_evidence_last_observation_age_seconds", "seconds since the evidence kind last "
                            "reported any phone of the site", labels=["site", "evidence"])
    foreign = CounterMetricFamily("fleet_evidence_foreign_messages", "messages naming a site's phone from an "
                                  "address not the phone's (never taken as its state), since the source started",
                                  labels=["site", "source"])
    dropped = CounterMetricFamily("fleet_evidence_dropped_datagrams", "datagrams a wire source dropped (clock, "
                                  "byte budget, size caps, HEP auth), by reason, since the source started",
                                  labels=["site", "source", "reason"])
    for site in snap.sites:
        report = snap.evidence.get(site)
        if report:
            report_age.add_metric([site], max(0.0, snap.t - report.get("t", 0.0)))
            sources = report.get("sources") or []
            for label, src in zip(_unique([str(s.get("source", "")) for s in sources]), sources):
                up.add_metric([site, label], 0.0 if src.get("error") else 1.0)
                foreign.add_metric([site, label], float(sum((src.get("foreign") or {}).values())))
                for reason, n in sorted((src.get("dropped") or {}).items()):
                    dropped.add_metric([site, label, reason], float(n))
        newest: dict[str, float] = {}
        for row in snap.rows.get(site, []):
            for kind, t in (row.get("evidence") or {}).items():
                if isinstance(t, (int, float)) and t > newest.get(kind, -math.inf):
                    newest[kind] = t
        for kind, t in sorted(newest.items()):
            age.add_metric([site, kind], max(0.0, snap.t - t))
    return [up, report_age, age, foreign, dropped]


def _le(bound: float) -> str:
    return "+Inf" if math.isinf(bound) else f"{bound:g}"


def duration_families(snap: Snapshot) -> list[Metric]:
    out = {m: HistogramMetricFamily(f"fleet_{m}_seconds", f"phones' measured {m} time, from experiments and "
                                    "incidents (origin)", labels=["site", "origin"])
           for m in ("failover", "recovery")}
    for h in snap.histograms:
        out[h.measure].add_metric([h.site, h.origin], [(_le(b), float(n)) for b, n in h.buckets], h.sum)
    return list(out.values())


def rollout_families(snap: Snapshot) -> list[Metric]:
    phones = GaugeMetricFamily("fleet_rollout_phones", "an unfinished rollout's phones at the site: done (verified "
                               "or skipped), failed, remaining", labels=["rollout", "site", "state"])
    wave = GaugeMetricFamily("fleet_rollout_wave", "the wave the rollout's phones at the site are in",
                             labels=["rollout", "site"])
    status = GaugeMetricFamily("fleet_rollout_status", "1 for the rollout's status (planned, running, halted)",
                               labels=["rollout", "site", "status"])
    for p in snap.rollouts:
        for state, n in zip(ROLLOUT_STATES, (p.done, p.failed, p.remaining)):
            phones.add_metric([p.rollout, p.site, state], n)
        wave.add_metric([p.rollout, p.site], p.wave)
        status.add_metric([p.rollout, p.site, p.status], 1.0)
    return [phones, wave, status]


def families(snap: Snapshot) -> list[Metric]:
    """Every family one scrape exports."""
    return (phone_families(snap) + site_families(snap) + evidence_families(snap) + duration_families(snap)
            + rollout_families(snap))
