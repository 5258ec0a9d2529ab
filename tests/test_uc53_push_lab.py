"""A UC Software 5.3 phone (no REST API) in state polling push mode, on the lab (issue 16, review point 1).

The lab's site files put every phone in requestor mode, which hid that fleet chose REST vs state polling by family:
here the phone's own parameters (`phones.params_of`) put it in push mode to the site's collector, as fleet's
default does on a real site. The collector polls it in push mode (so it pushes its state, and the store holds it),
and a worker's call check reads that pushed state.
"""
from __future__ import annotations

import pytest

from conftest import lab_spec, start_collector, wait_until

pytestmark = pytest.mark.slow



@pytest.fixture(scope="module")
def lab(lab_factory):
    spec = lab_spec("uc53push", phones=1, models=["VVX 410"], poll_interval=0.2)
    site = spec["sites"][0]
    site["firmware_version"] = "5.3.0"
    site["phones"]["params_of"] = {0: {"apps.statePolling.responseMode": 1,
                                       "apps.statePolling.URL": f"http://{site['collector']['events']}/state"}}
    return lab_factory(spec)


def test_the_collector_polls_a_53_phone_in_push_mode_and_a_call_check_reads_the_push(lab, redis_url, tmp_path):
    from fleet import phones
    from fleet.config import inventory
    from fleet.state.store import Store

    inv = inventory.load(lab.inventory)
    secrets = inventory.Secrets(inv)
    phone = inv.sites[0].phones[0]
    assert phone.firmware_version == "5.3.0" and lab.status()["phones"][0].get("rest") is None
    store = Store(redis_url)
    store.r.delete(f"phone:{phone.mac}")
    collector = start_collector(redis_url, lab.inventory, ("hq",), tmp_path / "collector.log")
    try:
        # only the collector's poll makes the phone push (no control has asked it yet)
        wait_until(lambda: store.pushed_call_state(phone.mac) is not None, 30,
                   "the collector's poll made the 5.3 phone push its state",
                   state=lambda: (tmp_path / "collector.log").read_text()[-1500:])
        control = phones.for_phone(phone, secrets.credentials(phone.credentials), inv, secrets, store=store)
        check = control.call_check()
        assert check.state == "idle" and "pushed" in check.reason and "5.3.0" in check.reason, check
    finally:
        collector.stop()
