"""Which router addresses of an inventory name one router: the inventory allows one router in two sites only when
both say so, and a host name in one site and an IP address in the other must not pass as two routers.

A router is known by what the controller connects to: an IP address in canonical form (so `::1` and `0::1`, or
an IPv4-mapped IPv6 address and its IPv4 one, are one), and a host name both by its normalised spelling (case,
trailing dot) and by every address the controller's own resolver gives for it (the resolver SSH uses to reach
it). Names are resolved only when the inventory has two or more routers, in parallel, within one overall
budget: a name not resolved in time (no DNS at load time, a slow server) is compared by its spelling alone and
named in a warning, since it may still be a router listed elsewhere by address.
"""
from __future__ import annotations

import ipaddress
import logging
import socket
import threading
import time
from collections.abc import Iterable

from soundpoint import values

log = logging.getLogger(__name__)

RESOLVE_BUDGET = 3.0      # seconds for all names of one inventory together


def canonical_ip(address: str) -> str | None:
    """The canonical text of an IP address (IPv4-mapped IPv6 as IPv4), or None for a host name."""
    if not values.is_ip(address):
        return None
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return str(ip)


def _resolve_all(names: list[str], budget: float) -> dict[str, set[str]]:
    """name -> its addresses, for the names resolved within `budget`; daemon threads, so a resolver that never
    answers holds up neither the load nor the interpreter's exit."""
    found: dict[str, set[str]] = {}
    lock = threading.Lock()

    def resolve(name: str) -> None:
        try:
            infos = socket.getaddrinfo(name, None, proto=socket.IPPROTO_TCP)
        except (OSError, UnicodeError):
            return
        addresses = {a for a in (canonical_ip(str(info[4][0])) for info in infos) if a}
        with lock:
            found[name] = addresses

    threads = [threading.Thread(target=resolve, args=(n,), daemon=True, name=f"resolve {n}") for n in names]
    for t in threads:
        t.start()
    deadline = time.monotonic() + budget
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    with lock:
        return dict(found)


def identities(addresses: Iterable[str], budget: float = RESOLVE_BUDGET) -> dict[str, frozenset[str]]:
    """Each distinct address text -> the tokens that identify its router (two addresses sharing a token are one
    router). Resolution happens only when there are two or more distinct addresses and one of them is a name."""
    texts = sorted(set(addresses))
    tokens: dict[str, set[str]] = {}
    names: list[str] = []
    for text in texts:
        ip = canonical_ip(text)
        if ip is not None:
            tokens[text] = {f"ip:{ip}"}
        else:
            name = text.lower().rstrip(".")
            tokens[text] = {f"name:{name}"}
            names.append(name)
    if names and len(texts) > 1:
        resolved = _resolve_all(sorted(set(names)), budget)
        for text in texts:
            if canonical_ip(text) is not None:
                continue
            name = text.lower().rstrip(".")
            if name in resolved and resolved[name]:
                tokens[text] |= {f"ip:{a}" for a in resolved[name]}
            else:
                log.warning("router address %s could not be resolved within %gs: it is told apart from the "
                            "inventory's other routers by its name alone (if it is one of them under another "
                            "address, list both sites in each other's router.shared_with)", text[:253], budget)
    return {text: frozenset(t) for text, t in tokens.items()}
