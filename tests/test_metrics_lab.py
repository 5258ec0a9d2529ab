"""Lab: a real Prometheus scrapes a real `fleet collector` over a userspace lab while the WAN is cut on the router
by hand (no experiment): its query for phones on fallback equals the lab's ground truth, during the outage and
after it; `promtool check metrics` finds nothing wrong in the scrape."""
from __future__ import annotations

import subprocess

import pytest
import requests
import yaml

from soundpoint.redisboot import free_port
from conftest import lab_spec, router_driver, start_collector, wait_until
from prometheus_server import Prometheus, require

pytestmark = [pytest.mark.lab, pytest.mark.slow]
SITE = "hq"
ON_FALLBACK = f'sum(fleet_site_phones_on_fallback{{site="{SITE}"}})'


def truth_on_fallback(lab) -> int:
    """Phones the lab itself says work with server 2 on line 1 (its ground truth, never seen by fleet)."""
    phones = lab.status()["ground_truth"]["phones"]
    return sum((p["current"].get("working_server") or {}).get("1") == 2 for p in phones.values())


@pytest.fixture(scope="module")
def lab(lab_factory):
    require("prometheus")
    return lab_factory(lab_spec("metrics", 111, phones=4, site=SITE))


def test_prometheus_counts_the_phones_on_fallback_the_lab_has_during_a_wan_cut_by_hand(lab, redis_url, tmp_path):
    inventory = yaml.safe_load(lab.inventory.read_text())
    address = f"127.0.0.1:{free_port()}"
    inventory["sites"][0]["collector"]["metrics"] = address
    inv_path = tmp_path / "inventory.yml"
    inv_path.write_text(yaml.safe_dump(inventory))
    wan = inventory["sites"][0]["router"]["wan_interface"]
    collector = start_collector(redis_url, inv_path, (SITE,), tmp_path / "collector.log")
    prom = None
    try:
        prom = Prometheus(tmp_path / "prometheus", [address])
        wait_until(lambda: prom.scalar(f'fleet_site_phones{{site="{SITE}"}}') == 4 and prom.scalar(ON_FALLBACK) == 0
                   and prom.scalar(f'up{{instance="{address}"}}') == 1, 60, "prometheus scraping 4 phones, none on fallback",
                   state=lambda: (prom.query(f'{{site="{SITE}", __name__=~"fleet_site_.*"}}'), truth_on_fallback(lab)))

        text = requests.get(f"http://{address}/metrics", timeout=10).text
        checked = subprocess.run([require("promtool"), "check", "metrics"], input=text, capture_output=True, text=True)
        assert checked.returncode == 0 and not checked.stdout.strip() and not checked.stderr.strip(), checked

        with router_driver(inv_path) as router:
            router.run(f"ip link set dev {wan} down")       # a real outage: on the router, no fleet experiment
            try:
                wait_until(lambda: truth_on_fallback(lab) == 4, 60, "every phone on server 2 (ground truth)")
                seen = wait_until(lambda: (n := prom.scalar(ON_FALLBACK)) == truth_on_fallback(lab) and (n,), 30,
                                  "prometheus' phones on fallback = the lab's",
                                  state=lambda: (prom.scalar(ON_FALLBACK), truth_on_fallback(lab)))
                assert seen == (4,)
                per_phone = prom.query(f'fleet_phone_working_server{{site="{SITE}", line="1"}} == 2')
                assert len(per_phone) == 4, per_phone
                assert prom.scalar(f'fleet_site_phones_registered_nowhere{{site="{SITE}"}}') == 0
            finally:
                router.run(f"ip link set dev {wan} up")
        wait_until(lambda: truth_on_fallback(lab) == 0, 90, "every phone back on server 1 (ground truth)")
        wait_until(lambda: prom.scalar(ON_FALLBACK) == truth_on_fallback(lab) == 0, 30,
                   "prometheus' phones on fallback back to 0 with the lab's",
                   state=lambda: (prom.scalar(ON_FALLBACK), truth_on_fallback(lab)))
    finally:
        if prom is not None:
            prom.stop()
        collector.stop()
