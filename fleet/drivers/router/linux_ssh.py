"""A Linux router over SSH: `ip link`, `iptables` and `tc netem` on the WAN interface."""
from __future__ import annotations

import re

from ...inventory import Credentials, Router
from ..errors import MalformedAnswer
from .ssh_base import CommandTable, SshRouter

TABLE = CommandTable(
    cut={
        "link-down": ["ip link set dev {wan} down"],
        "drop": ["iptables -I FORWARD -i {wan} -j DROP", "iptables -I FORWARD -o {wan} -j DROP"],
        "degrade": ["tc qdisc replace dev {wan} root netem loss {loss} delay {delay}"],
        "dns-fail": ["iptables -I FORWARD -p udp --dport {dns_port} -j DROP"],
    },
    restore={
        "link-down": ["ip link set dev {wan} up"],
        "drop": ["iptables -D FORWARD -i {wan} -j DROP", "iptables -D FORWARD -o {wan} -j DROP"],
        "degrade": ["tc qdisc del dev {wan} root"],
        "dns-fail": ["iptables -D FORWARD -p udp --dport {dns_port} -j DROP"],
    },
    state=["ip -o link show dev {wan}", "iptables -S FORWARD", "tc qdisc show dev {wan}"],
)
MODES = tuple(TABLE.cut)

_LINK = re.compile(r"^\d+:\s+(?P<dev>[^:@]+)[^<]*<(?P<flags>[^>]*)>")


class LinuxSshRouter(SshRouter):
    table = TABLE

    def parse_state(self, outputs: list[str]) -> dict:
        link, rules, qdisc = (outputs + ["", "", ""])[:3]
        m = _LINK.match(link.strip())
        if not m:
            raise MalformedAnswer(self.name, f"cannot parse `ip link show` output: {link.strip()[:120]!r}")
        wan = self.router.wan_interface
        return {"link_up": "UP" in m["flags"].split(","),
                "dropping": f"-i {wan} -j DROP" in rules or f"-o {wan} -j DROP" in rules,
                "dns_blocked": f"--dport {self.router.dns_port} -j DROP" in rules,
                "netem": "netem" in qdisc}


def connect(router: Router, credentials: Credentials) -> LinuxSshRouter:
    return LinuxSshRouter(router, credentials)
