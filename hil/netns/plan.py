"""Names and addresses of a namespace lab: pure functions of the lab's `net` and a site's index.

LANs come from 198.18.0.0/15 (one /24 per site, distinct for every `net` 1-60 and site 0-7,
so two labs can run side by side: their LANs meet in the root namespace through
the controller host's veths). The WAN is 203.0.113.0/24 and lives only inside
the lab's own namespaces, so it may repeat from lab to lab. No address of the
host's own network (192.0.2.0/24) is ever used.
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass

LAN_RANGE = ipaddress.ip_network("198.18.0.0/15")
WAN_RANGE = ipaddress.ip_network("203.0.113.0/24")
DNS_PORT = 53
SIP_PORT = 5060
SSH_PORT = 2222
SNMP_PORT = 161
BOOT_HTTP_PORT = 8080
PHONE_HTTP_PORT = 8080
MAX_PHONES_PER_SITE = 240          # .10 .. .249 of the site's /24
MAX_SITES = 8                      # per namespace lab: (net-1)*8+k keeps every lab's LANs apart in 198.18.0.0/15


def prefix(net: int) -> str:
    """Every namespace and root-side link of lab `net` starts with this (how stale ones are found)."""
    return f"hil{net}"


def wan_ns(net: int) -> str:
    return f"{prefix(net)}-wan"


def router_ns(net: int, k: int) -> str:
    return f"{prefix(net)}-r{k}"


def lan_ns(net: int, k: int) -> str:
    return f"{prefix(net)}-l{k}"


def provider_ip(net: int) -> str:
    """The provider's registrar, on the WAN namespace's loopback. Distinct per `net` (203.0.113.128-247), because
    the controller host routes to it from the root namespace, which labs side by side share."""
    return str(WAN_RANGE.network_address + 128 + 2 * (net % 60))


def dns_ip(net: int) -> str:
    """The provider's DNS, next to the registrar."""
    return str(WAN_RANGE.network_address + 129 + 2 * (net % 60))


def host_link(net: int, k: int) -> str:
    """The controller host's end of the veth into site k's LAN (root namespace; at most 15 characters)."""
    return f"{prefix(net)}h{k}"


@dataclass(frozen=True)
class SitePlan:
    net: int
    k: int

    @property
    def lan(self) -> ipaddress.IPv4Network:
        n = (self.net - 1) * MAX_SITES + self.k
        return ipaddress.ip_network(f"{LAN_RANGE.network_address + n * 256}/24")

    def lan_ip(self, host: int) -> str:
        return str(self.lan.network_address + host)

    @property
    def router_lan(self) -> str:
        return self.lan_ip(1)

    @property
    def boot_ip(self) -> str:
        return self.lan_ip(3)

    @property
    def host_ip(self) -> str:
        """The controller host on the site LAN: workers reach phones and the router from here, and phones
        send their events and syslog here."""
        return self.lan_ip(254)

    def phone_ip(self, i: int) -> str:
        return self.lan_ip(10 + i)

    @property
    def wan_peer(self) -> str:
        """The provider's end of the site's WAN link (the router's next hop)."""
        return str(WAN_RANGE.network_address + 4 * self.k + 1)

    @property
    def wan_ip(self) -> str:
        return str(WAN_RANGE.network_address + 4 * self.k + 2)
