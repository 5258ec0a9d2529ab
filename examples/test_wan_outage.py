"""A WAN outage on your site, as a pytest test: copy this file into your project's tests and run

    pytest test_wan_outage.py --fleet-inventory site.yml --fleet-site hq --junitxml=report.xml

(or `--fleet-lab hil/labs/demo-wire.yml` to try it on the virtual lab, started and stopped for the session).
Only the fixtures of fleet's pytest plugin are used (installed with fleet; README, "Writing your own HIL tests
with pytest"): `fleet_site`, `fleet_phones` and `wan_outage`.

The site's inventory must name a per-server evidence source (`capture: [router lan0]`, HEP, or the gateway's
registrar): that is how the plugin tells which server each phone works with. Every wait's timeout comes from
the phones' own configuration (`fleet_site.timeout_for`: twice the slowest predicted bound, plus 10 s).
"""
import pytest


def test_every_phone_fails_over_to_the_gateway_and_back(fleet_site, fleet_phones, wan_outage):
    # before: every phone works with server 1 (the provider); refreshes put each on the wire within an expiry
    fleet_site.wait_for_server(fleet_phones, server=1, timeout=fleet_site.timeout_for("refresh", fleet_phones))

    # the router cuts the WAN with its dead-man armed for 300 s, and restores it when the block ends,
    # whatever ends it: a failed assertion, an exception, Ctrl-C
    with wan_outage(mode="link-down", duration=300) as outage:
        fleet_site.wait_for_server(fleet_phones, server=2, timeout=fleet_site.timeout_for("failover", fleet_phones))
    assert outage.restored, outage.summary()          # the router confirmed the WAN back, nothing of ours left

    fleet_site.wait_for_server(fleet_phones, server=1, timeout=fleet_site.timeout_for("recovery", fleet_phones))
    # the JUnit report now carries fleet.outage.* and, per phone, fleet.phone.<mac>.failover_s, recovery_s and
    # evidence (the observations the verdict rests on); the same figures in the test itself:
    for phone in fleet_phones:
        measured = fleet_site.measure(outage, phone)
        assert measured["failover_s"] is not None and measured["recovery_s"] is not None, measured


@pytest.mark.fleet_phones(model="VVX 410")
def test_vvx_phones_work_with_the_provider(fleet_site, fleet_phones):
    # the marker narrows fleet_phones to one model (or firmware family: family="uc-5.x"); none there: skipped
    fleet_site.wait_for_server(fleet_phones, server=1, timeout=fleet_site.timeout_for("refresh", fleet_phones))
