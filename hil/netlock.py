"""Which lab holds which network: a lock per address block, so labs on one machine never share an address.

A userspace lab of net N with K sites binds loopback addresses in the /16 blocks 127.(N+k), 127.(N+40),
127.(N+50+k) and 127.(N+100+k) (hil.lab's address plan); a namespace lab of net N owns the namespaces
`hil{N}-*` and their 198.18/15 and 203.0.113 addresses (hil.netns.plan). Two suites, two demos, or a demo beside
the suite must not take the same ones. So a starting lab takes an exclusive `flock` on one file per block in a
directory every user of the machine shares, and holds it for its life: the kernel drops the lock when the process
ends, however it ends, so a killed lab never leaves a stale claim. `net: auto` (the default) takes the next
net whose blocks are all free, counting on from the net it gave last (so a lab does not inherit the MACs of the
one that just ended); a fixed net that another lab holds is refused, naming the holder. A block that
no lab claims but some other process has sockets bound in (an older lab, another program) counts as taken too,
and the refusal names that process from /proc.

The lock directory is $HIL_LOCK_DIR, else /tmp/soundpoint-hil-locks (mode 1777, like /tmp itself).
"""
from __future__ import annotations

import errno
import fcntl
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

USERSPACE_NETS = range(1, 151)     # hil.labfile: net 1-150 (phones at 127.(net+100+k) stay below 127.255)
NETNS_NETS = range(1, 61)          # hil.netns.plan: LANs laid out for nets 1-60
ALLOCATION_TIMEOUT = 60.0          # seconds to wait for other labs' allocations in progress (each takes milliseconds)


class NetTaken(RuntimeError):
    """The lab cannot have the addresses it needs; the message names each block taken and by whom."""


def lock_dir() -> Path:
    path = Path(os.environ.get("HIL_LOCK_DIR") or "/tmp/soundpoint-hil-locks")
    if not path.is_dir():
        path.mkdir(parents=True, exist_ok=True)
        try:
            os.chmod(path, 0o1777)       # every user's labs share the machine's loopback
        except PermissionError:
            pass
    return path


def userspace_blocks(net: int, sites: int) -> list[str]:
    """The 127.x.0.0/16 blocks a userspace lab of `net` with `sites` sites binds, as lock names ("127.61")."""
    octets = {net + 40}
    for k in range(max(sites, 1)):
        octets |= {net + k, net + 50 + k, net + 100 + k}
    return [f"127.{o}" for o in sorted(octets)]


def netns_blocks(net: int) -> list[str]:
    return [f"netns-{net}"]


@dataclass
class NetClaim:
    """The locks a running lab holds; `release` (or the process's end) gives them back."""
    net: int
    blocks: list[str]
    _fds: list[int] = field(default_factory=list, repr=False)

    def release(self) -> None:
        for fd in self._fds:
            try:
                os.close(fd)
            except OSError:
                pass
        self._fds.clear()


def _open(path: Path) -> int:
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
    except PermissionError:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)   # another user's file: a read-only descriptor locks as well
    try:
        os.fchmod(fd, 0o666)
    except OSError:
        pass
    return fd


def _holder(path: Path) -> str:
    """Who holds a block, as its holder wrote it (pid, lab, state directory)."""
    try:
        info = json.loads(path.read_text()[:4096] or "{}")
    except (OSError, ValueError):
        info = {}
    if not isinstance(info, dict) or "pid" not in info:
        return "another lab (no holder recorded)"
    return f"lab {info.get('lab', '?')!r} (pid {info.get('pid')}, state {info.get('state', '?')})"


def _try_lock(name: str, holder: dict) -> tuple[int | None, str]:
    path = lock_dir() / name
    fd = _open(path)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return None, _holder(path)
        raise
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(holder).encode(), 0)
    except OSError:
        pass          # read-only (another user's file): the lock holds; only the holder's name is missing
    return fd, ""


def _bound_octets() -> dict[int, int]:
    """Second octets of 127.x addresses that some socket is bound to (/proc/net), each with one socket's inode."""
    found: dict[int, int] = {}
    for octet, inode in _bound_sockets():
        found.setdefault(octet, inode)
    return found


def _bound_sockets() -> list[tuple[int, int]]:
    """(second octet, socket inode) of every socket bound to a 127.x address other than 127.0, from /proc/net."""
    found: list[tuple[int, int]] = []
    for table in ("tcp", "udp", "raw"):
        try:
            lines = Path(f"/proc/net/{table}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            if len(parts) < 10:
                continue
            address = parts[1].split(":")[0]
            if len(address) != 8:
                continue
            raw = bytes.fromhex(address)[::-1]            # /proc/net prints IPv4 little-endian
            if raw[0] == 127 and raw[1] != 0:
                found.append((raw[1], int(parts[9])))
    return found


def _process_of(inode: int) -> str:
    """The process holding socket `inode`, for the refusal's message ("pid 123: python -m hil.cli up ...")."""
    target = f"socket:[{inode}]"
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                if os.readlink(f"/proc/{pid}/fd/{fd}") == target:
                    cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                    return f"pid {pid}: {cmd.strip()[:120]}"
        except OSError:
            continue
    return "a process this user cannot see"


def _claim_blocks(net: int, blocks: list[str], holder: dict, bound: dict[int, int],
                  explain: bool = True) -> NetClaim | list[str]:
    """Every block of `net`, or what keeps it (nothing held then): per holder, the blocks it has. Naming a program
    by its socket means reading every process's descriptors (slow beside big labs), so only for a refusal's text."""
    fds: list[int] = []
    taken: dict[str, list[str]] = {}
    for name in blocks:
        fd, who = _try_lock(name, holder)
        if fd is None:
            taken.setdefault(f"held by {who}", []).append(name)
            continue
        fds.append(fd)
        if name.startswith("127.") and int(name.split(".")[1]) in bound:   # no lab's claim, but some program's sockets
            who = _process_of(bound[int(name.split('.')[1])]) if explain else "another program"
            taken.setdefault(f"has sockets bound by {who}", []).append(name)
    if taken:
        for fd in fds:
            os.close(fd)
        return [f"{', '.join(_shown(n) for n in names)} {'is' if len(names) == 1 else 'are'} {why}"
                if why.startswith("held") else f"{', '.join(_shown(n) for n in names)} {why}"
                for why, names in taken.items()]
    return NetClaim(net, blocks, fds)


def _shown(block: str) -> str:
    return f"{block}.0.0/16" if block.startswith("127.") else block


def claim(net: int | str, sites: int, *, backend: str = "userspace", lab: str = "", state: str = "") -> NetClaim:
    """The locks for `net` (or, for "auto", the first free net); NetTaken says which blocks are taken and by whom."""
    holder = {"pid": os.getpid(), "lab": lab, "state": state, "since": time.time()}
    if backend == "netns":
        nets, blocks_of = NETNS_NETS, (lambda n: netns_blocks(n))
    else:
        nets = range(USERSPACE_NETS.start, min(USERSPACE_NETS.stop, 256 - 100 - max(sites, 1)))
        blocks_of = (lambda n: userspace_blocks(n, sites))
    with _allocating():
        bound = _bound_octets() if backend == "userspace" else {}
        if net != "auto":
            got = _claim_blocks(int(net), blocks_of(int(net)), holder, bound)
            if isinstance(got, list):
                raise NetTaken(f"lab {lab!r} cannot have net {net}: " + "; ".join(got)
                               + " (omit `net` or write `net: auto` to take a free one)")
            return got
        start = _next_net(backend, nets)
        for n in [*range(start, nets.stop), *range(nets.start, start)]:
            got = _claim_blocks(n, blocks_of(n), holder, bound, explain=False)
            if not isinstance(got, list):
                _set_next_net(backend, n + 1 if n + 1 < nets.stop else nets.start)
                return got
        raise NetTaken(f"lab {lab!r}: no free net for {sites} site(s) among nets {nets.start}-{nets.stop - 1} "
                       f"(every one is held by a running lab or has sockets bound; see {lock_dir()})")


def _next_net(backend: str, nets: range) -> int:
    """Where `auto` starts looking: after the net it gave last. Taking the first free net would give a lab the net
    (so the addresses and MACs) of the lab that just ended, and records keyed by MAC in a Redis both used (rollout
    stacks, incidents) would carry over from one lab's phones to the other's."""
    try:
        n = int((lock_dir() / f"next-{backend}").read_text()[:16])
    except (OSError, ValueError):
        return nets.start
    return n if n in nets else nets.start


def _set_next_net(backend: str, n: int) -> None:
    path = lock_dir() / f"next-{backend}"
    try:
        fd = _open(path)
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, str(n).encode(), 0)
        finally:
            os.close(fd)
    except OSError:
        pass          # another user's file, read-only: auto starts from its net, still a free one


class _allocating:
    """One allocation at a time on this machine, so two labs never each take half of the same net's blocks."""

    def __enter__(self) -> None:
        self.fd = _open(lock_dir() / "allocating")
        deadline = time.monotonic() + ALLOCATION_TIMEOUT
        while True:
            try:
                fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except OSError:
                if time.monotonic() > deadline:
                    os.close(self.fd)
                    raise NetTaken(f"another lab has been choosing its net for over {ALLOCATION_TIMEOUT:.0f} s "
                                   f"({_holder(lock_dir() / 'allocating')})") from None
                time.sleep(0.05)

    def __exit__(self, *exc: object) -> None:
        os.close(self.fd)
