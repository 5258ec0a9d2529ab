"""File descriptors: what a lab needs, raising the process's limit to it, and stopping at once when it runs out.

A lab that runs out of descriptors half-way does not fail cleanly by itself: a router relay that cannot open a
flow's socket drops that flow, a phone whose DNS socket fails stops refreshing, and the rest runs on, wrong. So:

- before opening anything, `estimate` counts what the lab file needs (each part named), and `ensure` raises
  RLIMIT_NOFILE to it (the soft limit up to the hard one; the hard one too where the process may, as root) or
  raises OutOfDescriptors saying how many are needed against which limit and what to do;
- at run time every place that opens sockets calls `check` on an OSError: EMFILE/ENFILE tells the callbacks
  registered with `on_exhausted` (the lab stops itself with the reason) and raises OutOfDescriptors.
"""
from __future__ import annotations

import errno
import logging
import math
import os
import resource
from dataclasses import dataclass, field
from typing import Callable, Iterator

log = logging.getLogger(__name__)

EXHAUSTED = (errno.EMFILE, errno.ENFILE)
BASE = 64                    # the interpreter, its libraries, logging, the control API, the HTTP client pool
PER_SITE = 16                # router relay listeners, control socket, SSH, SNMP, gateway, boot servers, HEP tap
DNS_FLOW_S = 5               # a relayed DNS flow lives at most this long: closed once answered, or unanswered after
                             # it (hil.router.QUESTION_FLOW_S)
MARGIN = 0.05                # on top of the estimate: bursts (boot fetches, events) the counts do not see

_callbacks: list[Callable[[str], None]] = []


class OutOfDescriptors(RuntimeError):
    """The lab needs (or asked for) more file descriptors than it may open; the message says how to fix it."""


@dataclass
class Budget:
    """Descriptors a lab needs, by part (name -> count)."""
    parts: dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(self.parts.values())

    def describe(self) -> str:
        return ", ".join(f"{name} {n}" for name, n in self.parts.items() if n)


def estimate(spec, shared_sip: bool, shared_http: bool = False) -> Budget:
    """What the lab file `spec` (hil.labfile.LabFile) needs open at once, by part.

    Per phone: its SIP socket (none on the shared socket), its HTTP listener (`http: true`), and the router
    relay's flow for its SIP to the provider (a NAT mapping: one WAN socket per LAN address and port). DNS flows
    through the relay live until their answer, DNS_FLOW_S at most: the boot burst (every phone within boot_jitter) or the
    steady rate (every dns_ttl), whichever is larger."""
    phones = sum(s.phones.count for s in spec.sites)
    relayed = sum(s.phones.count for s in spec.sites
                  if s.outbound_proxy != "gateway" and any(srv.address == "provider" for srv in s.servers))
    queries = 3 if spec.provider.naptr_srv else 1
    named = sum(s.phones.count for s in spec.sites if any(srv.address == "provider" for srv in s.servers))
    boot_rate = named / max(spec.timing.boot_jitter, 1.0)
    steady_rate = named / max(spec.timing.dns_ttl, 1)
    dns = min(named * queries, math.ceil(max(boot_rate, steady_rate) * queries * DNS_FLOW_S))
    parts = {
        "base": BASE + PER_SITE * len(spec.sites),
        "phone SIP sockets": 1 if shared_sip else phones,
        "phone HTTP listeners": (1 if shared_http else phones) if spec.http else 0,
        "router relay SIP flows": relayed,
        "router relay DNS flows": dns,
    }
    parts["margin"] = math.ceil(MARGIN * sum(parts.values())) + 32
    return Budget(parts)


def ensure(needed: Budget, may_raise_hard: bool = True) -> int:
    """Raise RLIMIT_NOFILE so that `needed` fits; the soft limit in force. OutOfDescriptors when it cannot."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = needed.total
    if want <= soft:
        return soft
    if want <= hard or hard == resource.RLIM_INFINITY:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard if hard != resource.RLIM_INFINITY else want, hard))
        return resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if may_raise_hard:
        try:      # past the hard limit: only with CAP_SYS_RESOURCE, and never past fs.nr_open
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, want))
            return want
        except (ValueError, OSError):
            pass
    raise OutOfDescriptors(
        f"this lab needs about {want} file descriptors ({needed.describe()}), but the limit is {hard} "
        f"(RLIMIT_NOFILE hard limit, which this process may not raise): raise it (`ulimit -Hn {want}` as root, "
        f"or LimitNOFILE= / limits.conf), or use fewer phones per process")


def on_exhausted(callback: Callable[[str], None]) -> Callable[[], None]:
    """Call `callback(reason)` when a socket cannot be opened for want of descriptors; returns the unregister."""
    _callbacks.append(callback)
    return lambda: _callbacks.remove(callback) if callback in _callbacks else None


def check(exc: BaseException, where: str) -> None:
    """If `exc` is running out of descriptors: tell the callbacks and raise OutOfDescriptors (else return)."""
    if not (isinstance(exc, OSError) and exc.errno in EXHAUSTED):
        return
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    reason = (f"{where}: out of file descriptors ({os.strerror(exc.errno)}; {open_count()} open, limit {soft}): "
              f"raise `ulimit -n` or use fewer phones per process")
    log.error("%s", reason)
    for cb in list(_callbacks):
        cb(reason)
    raise OutOfDescriptors(reason) from None


def open_count() -> int:
    """Descriptors this process holds now (Linux /proc; -1 elsewhere)."""
    try:
        return len(os.listdir("/proc/self/fd")) - 1     # less the one listdir itself holds
    except OSError:
        return -1


def fd_targets() -> Iterator[str]:
    """What each of this process's open descriptors points at ("socket:[INODE]", "pipe:[..]", a path); a
    descriptor closed while listed is left out."""
    for fd in os.listdir("/proc/self/fd"):
        try:
            yield os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue


def by_kind() -> dict[str, int]:
    """This process's open descriptors by kind (udp, tcp, unix, pipe, file, other), for the benchmark's breakdown.
    Sockets are told apart by their inode in /proc/net/{udp,tcp,unix} (IPv4 only)."""
    inodes: dict[str, str] = {}
    for kind, path in (("udp", "/proc/net/udp"), ("tcp", "/proc/net/tcp"), ("unix", "/proc/net/unix")):
        try:
            with open(path) as f:
                lines = f.read().splitlines()[1:]
        except OSError:
            continue
        col = 6 if kind == "unix" else 9
        for line in lines:
            cols = line.split()
            if len(cols) > col:
                inodes[cols[col]] = kind
    counts: dict[str, int] = {}
    for target in fd_targets():
        if target.startswith("socket:["):
            kind = inodes.get(target[8:-1], "other socket")
        elif target.startswith("pipe:"):
            kind = "pipe"
        elif target.startswith("/"):
            kind = "file"
        else:
            kind = "other"
        counts[kind] = counts.get(kind, 0) + 1
    return counts


def install_loop_hook(loop) -> None:
    """Errors asyncio reports by itself (a listener's accept() out of descriptors: it pauses and logs) reach the
    `on_exhausted` callbacks too; everything goes on to the handler that was there before."""
    if getattr(loop, "_hil_limits_hook", False):
        return
    previous = loop.get_exception_handler()

    def handler(loop, context: dict) -> None:
        exc = context.get("exception")
        try:
            check(exc, str(context.get("message", "socket")))
        except OutOfDescriptors:
            pass
        if previous is not None:
            previous(loop, context)
        else:
            loop.default_exception_handler(context)

    loop.set_exception_handler(handler)
    loop._hil_limits_hook = True
