"""The namespace lab's address plan (pure functions, no root needed): inside the lab's ranges, apart across labs."""
from __future__ import annotations

import ipaddress

import pytest

from hil.labfile import LabFile
from hil.netns import plan

HOST_NET = ipaddress.ip_network("192.0.2.0/24")


def test_every_lan_is_in_198_18_slash_15_and_no_two_labs_or_sites_share_one():
    seen = {}
    for net in range(1, 61):
        for k in range(plan.MAX_SITES):
            p = plan.SitePlan(net, k)
            assert p.lan.subnet_of(plan.LAN_RANGE) and not p.lan.overlaps(HOST_NET)
            assert p.lan not in seen, (net, k, seen.get(p.lan))
            seen[p.lan] = (net, k)
            assert ipaddress.ip_address(p.phone_ip(plan.MAX_PHONES_PER_SITE - 1)) in p.lan
            assert ipaddress.ip_address(p.host_ip) in p.lan
            assert ipaddress.ip_address(p.wan_ip) in plan.WAN_RANGE
    providers = {plan.provider_ip(n) for n in range(1, 61)} | {plan.dns_ip(n) for n in range(1, 61)}
    assert len(providers) == 120 and all(ipaddress.ip_address(a) in plan.WAN_RANGE for a in providers)
    # the provider's addresses never fall on a site's WAN link
    links = {str(plan.WAN_RANGE.network_address + 4 * k + h) for k in range(plan.MAX_SITES) for h in range(4)}
    assert not providers & links


def test_names_fit_linux_interface_names_and_never_prefix_another_lab():
    for net in range(1, 61):
        for k in range(plan.MAX_SITES):
            assert len(plan.host_link(net, k)) <= 15
        for other in range(1, 61):
            if other != net:
                assert not plan.router_ns(other, 0).startswith(plan.prefix(net) + "-")
                assert not plan.host_link(other, 0).startswith(plan.prefix(net) + "h")


def test_lab_file_refuses_a_netns_lab_too_big_for_the_plan():
    site = {"name": "hq", "phones": {"count": plan.MAX_PHONES_PER_SITE + 1}, "servers": [{"address": "provider"}]}
    with pytest.raises(ValueError, match="backend netns"):
        LabFile.model_validate({"name": "x", "backend": "netns", "sites": [site]})
    site["phones"]["count"] = 10
    LabFile.model_validate({"name": "x", "backend": "netns", "sites": [site]})
