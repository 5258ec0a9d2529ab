"""Lab: a real Prometheus scrapes a real `fleet collector` over a userspace lab. While the WAN is cut on the router
by hand (no experiment) its query for phones on fallback equals the lab's ground truth, during the outage and
after it; `promtool check metrics` finds nothing wrong in the scrape; an experiment's measured failover and
recovery times reach its histograms."""
from __future__ import annotations

import json
import subprocess

import pytest
import requests
import yaml

from fleet.state.durations import BUCKETS
from soundpoint.redisboot import free_port
from conftest import ROOT, lab_spec, router_driver, run_fleet, start_collector, wait_until
from prometheus_server import Prometheus, require

pytestmark = [pytest.mark.lab, pytest.mark.slow]
SITE = "metrics"   # not "hq": the session's Redis holds other modules' labs, most of them a site "hq"
PHONES = 4
ON_FALLBACK = f'sum(fleet_site_phones_on_fallback{{site="{SITE}"}})'


def truth_on_fallback(lab) -> int:
    """Phones the lab itself says work with server 2 on line 1 (its ground truth, never seen by fleet)."""
    phones = lab.status()["ground_truth"]["phones"]
    return sum((p["current"].get("working_server") or {}).get("1") == 2 for p in phones.values())


@pytest.fixture(scope="module")
def lab(lab_factory):
    require("prometheus")
    return lab_factory(lab_spec("metrics", phones=PHONES, site=SITE))


@pytest.fixture(scope="module")
def scraped(lab, redis_url, tmp_path_factory):
    """(inventory with a metrics address, that address, Prometheus): `fleet collector` serving /metrics for the
    lab's site, a Prometheus scraping it every second."""
    work = tmp_path_factory.mktemp("metrics-lab")
    inventory = yaml.safe_load(lab.inventory.read_text())
    address = f"127.0.0.1:{free_port()}"
    inventory["sites"][0]["collector"]["metrics"] = address
    inv_path = work / "inventory.yml"
    inv_path.write_text(yaml.safe_dump(inventory))
    collector = start_collector(redis_url, inv_path, (SITE,), work / "collector.log")
    prom = None
    try:
        prom = Prometheus(work / "prometheus", [address])
        wait_until(lambda: prom.scalar(f'fleet_site_phones{{site="{SITE}"}}') == PHONES and prom.scalar(ON_FALLBACK) == 0
                   and prom.scalar(f'up{{instance="{address}"}}') == 1, 60, "prometheus scraping the phones, none on fallback",
                   state=lambda: (prom.query(f'{{site="{SITE}", __name__=~"fleet_site_.*"}}'), truth_on_fallback(lab)))
        yield inv_path, address, prom
    finally:
        if prom is not None:
            prom.stop()
        collector.stop()


def test_prometheus_counts_the_phones_on_fallback_the_lab_has_during_a_wan_cut_by_hand(lab, scraped):
    inv_path, address, prom = scraped
    text = requests.get(f"http://{address}/metrics", timeout=10).text
    checked = subprocess.run([require("promtool"), "check", "metrics"], input=text, capture_output=True, text=True)
    assert checked.returncode == 0 and not checked.stdout.strip() and not checked.stderr.strip(), checked

    wan = yaml.safe_load(inv_path.read_text())["sites"][0]["router"]["wan_interface"]
    with router_driver(inv_path) as router:
        router.run(f"ip link set dev {wan} down")       # a real outage: on the router, no fleet experiment
        try:
            wait_until(lambda: truth_on_fallback(lab) == PHONES, 60, "every phone on server 2 (ground truth)")
            seen = wait_until(lambda: (n := prom.scalar(ON_FALLBACK)) == truth_on_fallback(lab) and (n,), 30,
                              "prometheus' phones on fallback = the lab's",
                              state=lambda: (prom.scalar(ON_FALLBACK), truth_on_fallback(lab)))
            assert seen == (PHONES,)
            per_phone = prom.query(f'fleet_phone_working_server{{site="{SITE}", line="1"}} == 2')
            assert len(per_phone) == PHONES, per_phone
            assert prom.scalar(f'fleet_site_phones_registered_nowhere{{site="{SITE}"}}') == 0
        finally:
            router.run(f"ip link set dev {wan} up")
    wait_until(lambda: truth_on_fallback(lab) == 0, 90, "every phone back on server 1 (ground truth)")
    wait_until(lambda: prom.scalar(ON_FALLBACK) == truth_on_fallback(lab) == 0, 30,
               "prometheus' phones on fallback back to 0 with the lab's",
               state=lambda: (prom.scalar(ON_FALLBACK), truth_on_fallback(lab)))


def test_an_experiments_measured_times_reach_the_failover_and_recovery_histograms(lab, scraped, redis_url,
                                                                                 worker_factory, tmp_path):
    inv_path, _, prom = scraped
    worker_factory(inv_path, SITE, collect=False)        # the collector above observes; the worker runs the steps
    pb = tmp_path / "wan-outage-fallback.yml"
    pb.write_text((ROOT / "playbooks/wan-outage-fallback.yml").read_text().replace("site: hq", f"site: {SITE}"))
    res = run_fleet(["experiment", "run", str(pb), "--inventory", str(inv_path), "--report-dir", str(tmp_path), "--json"],
                    redis_url)
    assert res.returncode == 0, res.stderr + res.stdout[-3000:]
    phones = json.loads(res.stdout)["phones"]
    labels = f'site="{SITE}", origin="experiment"'
    for measure in ("failover", "recovery"):
        values = [p[f"{measure}_s"] for p in phones]
        assert len(values) == PHONES and None not in values, phones
        wait_until(lambda: prom.scalar(f"fleet_{measure}_seconds_count{{{labels}}}") == PHONES, 30,
                   f"{measure} histogram count in prometheus",
                   state=lambda: prom.query(f'{{__name__=~"fleet_{measure}_seconds_.*", {labels}}}'))
        assert prom.scalar(f"fleet_{measure}_seconds_sum{{{labels}}}") == pytest.approx(sum(values), abs=0.01)
        # every phone in the first bucket at or above the longest time; none in a bucket below the shortest
        le = lambda bound: prom.scalar(f'fleet_{measure}_seconds_bucket{{{labels}, le="{bound:g}"}}')  # noqa: E731
        assert le(min(b for b in BUCKETS if b >= max(values))) == PHONES
        below = [b for b in BUCKETS if b < min(values)]
        assert not below or le(max(below)) == 0
