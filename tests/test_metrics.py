"""The collector's Prometheus metrics (issue 20 part 3): what each family says for hand-made rows (unit), what a
real exporter serves from a real Redis (integration: HTTP, the text parsed back, `promtool check metrics`), the
inventory's `collector.metrics` and the hooks incidents will use."""
from __future__ import annotations

import json
import math
import subprocess
import time
import uuid

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from fleet.evidence.metrics import families as fam
from fleet.evidence.metrics.exporter import ExporterError, StoreCollector, start_exporters
from fleet.state import durations, open_incidents, scrape
from fleet.state.observe import Observation
from fleet.state.store import RolloutStore, Store
from soundpoint.redisboot import free_port
from conftest import SMALL_INVENTORY
from prometheus_server import require

NOW = 1_800_000_000.0


def _server(index: int, state: str, expires_at: float | None = None, register: bool = True) -> dict:
    return {"index": index, "address": f"s{index}", "register": register, "state": state, "source": "wire",
            "observed_at": NOW - 5, "code": None, "expires_at": expires_at}


def _row(mac: str, working: int | None, servers: list[dict], observed: bool = True, lines: dict | None = None,
         evidence: dict | None = None) -> dict:
    return {"mac": mac, "site": "hq", "model": "VVX 410", "firmware": None, "working_server": working,
            "servers": servers, "observed_at": NOW - 5 if observed else None, "source": "wire",
            "evidence": evidence or {}, "working_inferred": False, "lines": lines or {}}


def samples(metrics) -> dict[tuple, float]:
    """(sample name, sorted labels) -> value, for every sample of the families."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for m in metrics for s in m.samples}


def value(metrics, name: str, **labels) -> float | None:
    return samples(metrics).get((name, tuple(sorted(labels.items()))))


# ---------------------------------------------------------------------------------------------- unit: families

def test_phones_on_fallback_registered_nowhere_and_lapsed_bindings_are_counted_per_site():
    rows = [
        _row("a1", 1, [_server(1, "registered", NOW + 30), _server(2, "registered", NOW + 30)]),
        _row("a2", 2, [_server(1, "unregistered"), _server(2, "registered", NOW + 30)]),
        _row("a3", None, [_server(1, "unregistered"), _server(2, "unregistered")]),
        # server 2 still says registered, but its binding lapsed 10 s ago: registered nowhere now
        _row("a4", None, [_server(1, "unregistered"), _server(2, "registered", NOW - 10)]),
        _row("a5", None, [_server(1, "unknown"), _server(2, "unknown")], observed=False),
        # the gateway's bindings only: server 2 registered, server 1 unknown, working server unknown: not nowhere
        _row("a6", None, [_server(1, "unknown"), _server(2, "registered", NOW + 30)]),
        # registers with server 2 only (server 1 configured with register=0): server 2 is its first, not fallback
        _row("a7", 2, [_server(1, "unknown", register=False), _server(2, "registered", NOW + 30)]),
    ]
    snap = scrape.Snapshot(t=NOW, sites=["hq"], rows={"hq": rows})
    out = fam.families(snap)
    assert value(out, "fleet_site_phones", site="hq") == 7
    assert value(out, "fleet_site_phones_on_fallback", site="hq") == 1            # a2
    assert value(out, "fleet_site_phones_registered_nowhere", site="hq") == 2     # a3, a4
    assert value(out, "fleet_site_phones_unobserved", site="hq") == 1             # a5
    assert value(out, "fleet_phone_server_registered", site="hq", phone="a4", line="1", server="2") == 0
    assert value(out, "fleet_phone_server_registered", site="hq", phone="a2", line="1", server="2") == 1
    assert value(out, "fleet_phone_server_registered", site="hq", phone="a2", line="1", server="1") == 0
    assert value(out, "fleet_phone_server_registered", site="hq", phone="a5", line="1", server="1") is None
    assert value(out, "fleet_phone_working_server", site="hq", phone="a2", line="1") == 2
    assert value(out, "fleet_phone_working_server", site="hq", phone="a3", line="1") == 0


def test_every_observed_line_of_a_phone_has_its_own_series():
    line2 = {"working_server": 2, "working_inferred": False,
             "servers": [_server(1, "unregistered"), _server(2, "registered", NOW + 30)]}
    snap = scrape.Snapshot(t=NOW, sites=["hq"], rows={"hq": [
        _row("b1", 1, [_server(1, "registered", NOW + 30)], lines={"2": line2})]})
    out = fam.families(snap)
    assert value(out, "fleet_phone_working_server", site="hq", phone="b1", line="1") == 1
    assert value(out, "fleet_phone_working_server", site="hq", phone="b1", line="2") == 2
    assert value(out, "fleet_phone_server_registered", site="hq", phone="b1", line="2", server="2") == 1
    assert value(out, "fleet_site_phones_on_fallback", site="hq") == 0       # site counts are line 1's


def test_evidence_sources_up_foreign_dropped_and_ages_with_unique_labels():
    report = {"t": NOW - 4, "unobservable": [], "sources": [
        {"source": "router capture", "running": True, "error": "", "foreign": {"10.0.0.9": 3, "10.0.0.8": 1},
         "dropped": {"clock_ahead": 2}},
        {"source": "router capture", "running": False, "error": "SSH refused", "foreign": {}},
        {"source": "hep", "running": True, "error": "", "foreign": {}, "dropped": {"auth_wrong": 7, "budget": 1}}]}
    rows = [_row("c1", 1, [], evidence={"wire": NOW - 3, "event": NOW - 60}),
            _row("c2", 1, [], evidence={"wire": NOW - 1})]
    out = fam.families(scrape.Snapshot(t=NOW, sites=["hq"], rows={"hq": rows}, evidence={"hq": report}))
    assert value(out, "fleet_evidence_source_up", site="hq", source="router capture") == 1
    assert value(out, "fleet_evidence_source_up", site="hq", source="router capture #2") == 0
    assert value(out, "fleet_evidence_source_up", site="hq", source="hep") == 1
    assert value(out, "fleet_evidence_foreign_messages_total", site="hq", source="router capture") == 4
    assert value(out, "fleet_evidence_dropped_datagrams_total", site="hq", source="hep", reason="auth_wrong") == 7
    assert value(out, "fleet_evidence_dropped_datagrams_total", site="hq", source="router capture",
                 reason="clock_ahead") == 2
    assert value(out, "fleet_evidence_report_age_seconds", site="hq") == pytest.approx(4)
    assert value(out, "fleet_evidence_last_observation_age_seconds", site="hq", evidence="wire") == pytest.approx(1)
    assert value(out, "fleet_evidence_last_observation_age_seconds", site="hq", evidence="event") == pytest.approx(60)


def test_a_wire_sources_health_counts_every_drop_since_it_started_not_only_lately():
    from fleet.evidence.sources.base import with_drops
    from fleet.evidence.wire.guard import DropHealth, SenderDrops

    clock = [0.0]
    drops = DropHealth(window=10.0, clock=lambda: clock[0])
    for _ in range(3):
        drops.saw("clock_ahead")
    clock[0] = 100.0                          # the health window forgot them; the counter must not
    drops.saw("budget")
    drops.saw(None)
    health = with_drops({"source": "router capture", "running": True, "error": "", "since": None}, drops, [None])
    assert health["dropped"] == {"clock_ahead": 3, "budget": 1} and health["error"] == ""
    senders = SenderDrops()
    senders.saw("auth_wrong", sender="10.0.0.1")
    senders.saw("auth_wrong", sender="10.0.0.2")
    senders.saw("clock_behind", sender="10.0.0.2")
    assert with_drops({"source": "hep", "error": ""}, senders, [None])["dropped"] == {"auth_wrong": 2, "clock_behind": 1}


def test_rollout_state_names_are_the_rollout_policys():
    from fleet.rollout import policy

    assert set(scrape.ROLLOUT_FAILED) == set(policy.FAILED)
    assert set(scrape.ROLLOUT_DONE) | set(scrape.ROLLOUT_FAILED) == set(policy.SETTLED)
    assert not set(scrape.ROLLOUT_UNFINISHED) & set(policy.FINISHED)


def test_a_duration_lands_in_the_first_bucket_at_or_above_it():
    assert durations.bucket_of(0.2) == 0 and durations.bucket_of(1) == 0 and durations.bucket_of(1.01) == 1
    assert durations.bucket_of(600) == len(durations.BUCKETS) - 1 and durations.bucket_of(601) == len(durations.BUCKETS)


# --------------------------------------------------------------------------------- integration: real Redis

@pytest.fixture
def site(redis_url) -> tuple[Store, str]:
    """A fresh site name in the session's Redis, with three phones registered (configured with two servers)."""
    store = Store(redis_url)
    name = f"m{uuid.uuid4().hex[:8]}"
    servers = [{"index": 1, "address": "provider", "register": True}, {"index": 2, "address": "gw", "register": True}]
    store.register_phones(name, [{"mac": f"{name}{i:04x}", "model": "VVX 410", "address": f"127.0.0.{i + 2}",
                                  "servers": servers} for i in range(3)])
    return store, name


def scraped(store: Store, sites: list[str]):
    return list(StoreCollector(store, sites).collect())


def test_observations_stored_by_the_collector_path_are_what_a_scrape_exports(site):
    store, name = site
    t = time.time()
    store.record_observations([
        Observation(mac=f"{name}0000", t=t, source="syslog", server=1, state="unregistered"),
        Observation(mac=f"{name}0000", t=t, source="syslog", server=2, state="registered", expires=60),
        Observation(mac=f"{name}0001", t=t, source="syslog", server=1, state="registered", expires=60),
        Observation(mac=f"{name}0002", t=t, source="syslog", server=1, state="unregistered"),
        Observation(mac=f"{name}0002", t=t, source="syslog", server=2, state="unregistered")])
    out = scraped(store, [name])
    assert value(out, "fleet_site_phones", site=name) == 3
    assert value(out, "fleet_site_phones_on_fallback", site=name) == 1
    assert value(out, "fleet_site_phones_registered_nowhere", site=name) == 1
    assert value(out, "fleet_phone_working_server", site=name, phone=f"{name}0000", line="1") == 2
    assert value(out, "fleet_exporter_store_up") == 1
    assert 0 <= value(out, "fleet_evidence_last_observation_age_seconds", site=name, evidence="syslog") < 60


def test_experiment_durations_are_counted_once_and_exported_as_cumulative_histograms(site):
    store, name = site
    assert durations.record(store, name, "experiment", f"e1-{name}", {"failover": [3.0, 12.5, 900.0, float("nan")],
                                                                "recovery": [4.0]})
    assert not durations.record(store, name, "experiment", f"e1-{name}", {"failover": [1.0]})    # the same run again
    assert durations.record(store, name, "experiment", f"e2-{name}", {"failover": [0.5]})
    out = scraped(store, [name])
    labels = {"site": name, "origin": "experiment"}
    assert value(out, "fleet_failover_seconds_count", **labels) == 4
    assert value(out, "fleet_failover_seconds_sum", **labels) == pytest.approx(916.0)
    assert value(out, "fleet_failover_seconds_bucket", le="1", **labels) == 1
    assert value(out, "fleet_failover_seconds_bucket", le="5", **labels) == 2
    assert value(out, "fleet_failover_seconds_bucket", le="15", **labels) == 3
    assert value(out, "fleet_failover_seconds_bucket", le="600", **labels) == 3
    assert value(out, "fleet_failover_seconds_bucket", le="+Inf", **labels) == 4
    assert value(out, "fleet_recovery_seconds_count", **labels) == 1
    assert value(out, "fleet_failover_seconds_count", site=name, origin="incident") is None
    with pytest.raises(ValueError, match="origin"):
        durations.record(store, name, "drill", "e3", {"failover": [1.0]})


def test_open_incidents_read_as_none_until_detection_writes_them(site):
    store, name = site
    out = scraped(store, [name])
    assert value(out, "fleet_incidents_open", site=name) == 0
    assert value(out, "fleet_incident_phones_never_failed_over", site=name) == 0
    open_incidents.set_open(store, open_incidents.OpenIncident("i-1", name, time.time(), 3, 2, 1))
    out = scraped(store, [name])
    assert value(out, "fleet_incidents_open", site=name) == 1
    assert value(out, "fleet_incident_phones_never_failed_over", site=name) == 1
    open_incidents.close(store, name, "i-1")
    assert value(scraped(store, [name]), "fleet_incidents_open", site=name) == 0


@pytest.mark.parametrize("prefix", ["r-", "r*->"])     # an id SORT would take for a pattern is read phone by phone
def test_unfinished_rollouts_progress_per_site_and_finished_ones_are_not_exported(site, prefix):
    store, name = site
    macs = [f"{name}{i:04x}" for i in range(3)]
    rs = RolloutStore(store)
    rid, done_rid = f"{prefix}{name}", f"{prefix}{name}-done"
    for r in (rid, done_rid):
        rs.create(r, "fw.yml", {"phones": [{"mac": m} for m in macs], "waves": [[macs[0]], macs[1:]]}, {})
    rs.set(rid, status="halted")
    rs.set_phone(rid, macs[0], state="verified")
    rs.set_phone(rid, macs[1], state="rolled_back")
    rs.set(done_rid, status="done")
    out = scraped(store, [name])
    assert value(out, "fleet_rollout_phones", rollout=rid, site=name, state="done") == 1
    assert value(out, "fleet_rollout_phones", rollout=rid, site=name, state="failed") == 1
    assert value(out, "fleet_rollout_phones", rollout=rid, site=name, state="remaining") == 1
    assert value(out, "fleet_rollout_wave", rollout=rid, site=name) == 1
    assert value(out, "fleet_rollout_status", rollout=rid, site=name, status="halted") == 1
    assert not [k for k in samples(out) if dict(k[1]).get("rollout") == done_rid]


def test_a_scrape_while_redis_is_away_says_so_instead_of_failing():
    out = scraped(Store(f"redis://127.0.0.1:{free_port()}/0"), ["hq"])
    assert [(m.name, [s.value for s in m.samples]) for m in out] == [("fleet_exporter_store_up", [0.0])]


def test_the_exporter_serves_its_sites_over_http_and_promtool_finds_no_problem(site, tmp_path):
    store, name = site
    store.record_observations([Observation(mac=f"{name}0000", t=time.time(), source="syslog", server=1,
                                           state="registered", expires=60)])
    durations.record(store, name, "experiment", f"e-{name}", {"failover": [7.0], "recovery": [20.0]})
    from fleet.config.inventory import Collector, Site

    address = f"127.0.0.1:{free_port()}"
    sites = [Site.model_validate({"name": name, "gateway": "127.10.0.1", "boot_server": {"url": "http://127.10.0.3/"},
                                  "collector": Collector(metrics=address)}),
             Site.model_validate({"name": "other", "gateway": "127.10.0.1", "boot_server": {"url": "http://127.10.0.3/"}})]
    exporters = start_exporters(store, sites)
    try:
        assert [(e.address, e.sites) for e in exporters] == [(address, [name])]   # a site without an address: none
        answer = requests.get(f"http://{address}/metrics", timeout=10)
        assert answer.status_code == 200 and answer.headers["Content-Encoding"] == "gzip"    # requests asks for it
        plain = requests.get(f"http://{address}/metrics", headers={"Accept-Encoding": "identity"}, timeout=10)
        assert "Content-Encoding" not in plain.headers and "fleet_site_phones{" in plain.text
        assert requests.get(f"http://{address}/other", timeout=10).status_code == 404
        parsed = {m.name: m for m in text_string_to_metric_families(answer.text)}
        assert {s.labels["site"] for s in parsed["fleet_site_phones"].samples} == {name}
        assert parsed["fleet_failover_seconds"].type == "histogram"
        with pytest.raises(ExporterError, match=f"metrics for site {name} cannot listen on {address}"):
            start_exporters(store, sites)
        checked = subprocess.run([require("promtool"), "check", "metrics"], input=answer.text, capture_output=True,
                                 text=True)
        assert checked.returncode == 0 and not (checked.stdout + checked.stderr).strip(), checked
    finally:
        for e in exporters:
            e.stop()


@pytest.mark.parametrize("given,message", [
    ("0.0.0.0:9464", "collector metrics address '0.0.0.0:9464' is a wildcard"),
    ("127.0.0.1", "must be host:port"),
    ("127.0.0.1:70000", "port")])
def test_a_bad_metrics_address_names_file_line_and_field(tmp_path, given, message):
    from fleet.config import inventory
    from soundpoint.yamlfile import FileError

    text = SMALL_INVENTORY.replace("    gateway: 127.10.0.1\n", f"    gateway: 127.10.0.1\n    collector: {{metrics: \"{given}\"}}\n")
    (tmp_path / "secrets.yml").write_text("{}\n")
    (tmp_path / "secrets.yml").chmod(0o600)
    path = tmp_path / "inv.yml"
    path.write_text(text)
    with pytest.raises(FileError) as caught:
        inventory.load(str(path))
    assert "inv.yml:7: sites[0].collector.metrics: " in str(caught.value) and message in str(caught.value)


def test_fleet_collector_whose_metrics_address_is_taken_exits_3_naming_it(tmp_path, redis_url):
    import socket

    from conftest import run_fleet

    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    text = SMALL_INVENTORY.replace("    gateway: 127.10.0.1\n", "    gateway: 127.10.0.1\n    collector: {"
                                   f"syslog: \"127.0.0.1:{free_port()}\", events: \"127.0.0.1:{free_port()}\", "
                                   f"metrics: \"127.0.0.1:{port}\"}}\n")
    (tmp_path / "secrets.yml").write_text("".join(f"{n}: {{username: u, password: pw}}\n" for n in ("boot", "r", "admin")))
    (tmp_path / "secrets.yml").chmod(0o600)
    (tmp_path / "inv.yml").write_text(text)
    try:
        res = run_fleet(["collector", "--inventory", str(tmp_path / "inv.yml"), "--site", "hq"], redis_url, timeout=60)
    finally:
        taken.close()
    assert res.returncode == 3, res
    assert f"metrics for site hq cannot listen on 127.0.0.1:{port}" in res.stderr, res.stderr
