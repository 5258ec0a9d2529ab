"""Read-only reachability checks for a first day on a site: can fleet reach every device with what the inventory says?

Every check here only reads: the boot server is logged into and one file is
read (never written), the router gets its own read-only state command (SSH, with
its host key verified) or SNMP reads, each phone answers one read asked by its
family's control (fleet.phones: REST device info, state polling with its own
login, or the web UI; never a reboot, a setting or a call), and the collectors' listening
addresses are bound and released at once. A failed check names the device and
why, and never carries a secret (driver errors never hold passwords).
"""
from __future__ import annotations

import errno
import socket
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Callable, Iterable

from soundpoint import bootfiles

from fleet.drivers.errors import DriverError
from fleet.config.inventory import Credentials, Inventory, Phone, Secrets, Site
from soundpoint.redact import redact_url
from fleet.state.store import Store
from fleet.drivers.publish import open_publisher
from fleet.drivers import router as routers
from fleet import phones

DEFAULT_MASTER = bootfiles.DEFAULT_MASTER


@dataclass(frozen=True)
class Check:
    """One device, one read, one answer: what the probe table shows per row."""

    site: str
    device: str
    target: str
    ok: bool
    detail: str

    def to_dict(self) -> dict:
        return asdict(self)


def _device_error(exc: BaseException) -> str:
    """The driver's own words when it is ours (they name no secret), the exception type otherwise."""
    if isinstance(exc, DriverError):
        return str(exc)
    return f"{type(exc).__name__}"


def check_boot_server(site: Site, secrets: Secrets, timeout: float) -> Check:
    """Log in and read the master the phones read first (the named one, else the default): proves address,
    credentials and directory without writing."""
    url = site.boot_server.url
    target = redact_url(url)
    named = site.boot_server.master_file
    try:
        creds = secrets.credentials(site.boot_server.credentials) if site.boot_server.credentials else Credentials()
        pub = open_publisher(url, creds, timeout)
        try:
            data = pub.read(named or DEFAULT_MASTER)
        finally:
            pub.close()
    except Exception as exc:  # a probe reports, never crashes: every device gets its row
        return Check(site.name, "boot server", target, False, _device_error(exc))
    if named:   # the master the boot-server address names: the phones read it first (soundpoint.bootfiles)
        found = (f"read {named}, the master named in the boot-server address ({len(data)} bytes)" if data is not None
                 else f"logged in; no {named} there: phones fall back to <MAC>.cfg, then {DEFAULT_MASTER}")
    else:
        found = (f"read {DEFAULT_MASTER} ({len(data)} bytes)" if data is not None
                 else f"logged in; no {DEFAULT_MASTER} there")
    if url.startswith(("http://", "https://")):
        found += "; the write password is first used by a rollout (reads need none)"
    return Check(site.name, "boot server", target, True, found)


def check_router(site: Site, secrets: Secrets) -> Check | None:
    """The router driver's read-only state query: SSH host key, login and a harmless command, or SNMP reads."""
    if site.router is None:
        return None
    r = site.router
    target = f"{r.driver} {r.address}:{r.port}"
    try:
        drv = routers.connect(r, secrets.credentials(r.credentials))
        try:
            state = drv.wan_state()
        finally:
            drv.close()
    except Exception as exc:
        return Check(site.name, "router", target, False, _device_error(exc))
    detail = f"state read; WAN {r.wan_interface}: {state.describe()}"
    return Check(site.name, "router", target, True, detail)


def check_phone(site: Site, phone: Phone, inv: Inventory, secrets: Secrets, timeout: float,
                store: Store | None = None) -> Check:
    """The phone's own control (fleet.phones) reads it by its family's method and login, read-only; its REST
    request holds the phone's lock in `store`, as the collectors' and workers' requests do."""
    target = f"{phone.address}:{phone.http_port}"
    device = f"phone {phone.mac}"
    try:
        control = phones.for_phone(phone, secrets.credentials(phone.credentials), inventory=inv, secrets=secrets,
                                   store=store)
    except Exception as exc:   # a missing secret: the row says which, never its value
        return Check(site.name, device, target, False, _device_error(exc) if isinstance(exc, DriverError)
                     else f"credentials: {str(exc)[:200] if isinstance(exc, KeyError) else type(exc).__name__}")
    try:
        found = control.identify(timeout)
    except Exception as exc:   # a probe reports, never crashes: every device gets its row
        return Check(site.name, device, target, False, _device_error(exc))
    return Check(site.name, device, target, found.ok, found.describe())


def _bindable(address: str, kind: int) -> str | None:
    """None when the address can be listened on now; otherwise why not."""
    host, _, port = address.rpartition(":")
    host = host.strip("[]")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, kind)
    try:
        sock.bind((host, int(port)))
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            return "in use (is a fleet collector or another listener already running?)"
        if exc.errno == errno.EADDRNOTAVAIL:
            return "not an address of this host"
        if exc.errno == errno.EACCES:
            return "permission denied (ports below 1024 need root or CAP_NET_BIND_SERVICE)"
        return exc.strerror or type(exc).__name__
    finally:
        sock.close()
    return None


def check_collector(site: Site) -> list[Check]:
    out = []
    for what, address, kind in (("collector syslog", site.collector.syslog, socket.SOCK_DGRAM),
                                ("collector events", site.collector.events, socket.SOCK_STREAM)):
        why = _bindable(address, kind)
        out.append(Check(site.name, what, address, why is None, why or "free"))
    return out


def probe(inv: Inventory, secrets: Secrets, sites: Iterable[str] | None = None, timeout: float = 5.0,
          concurrency: int = 32, progress: Callable[[int], None] | None = None,
          store: Store | None = None) -> list[Check]:
    """Every check of the named sites (all by default), phones in parallel; rows in inventory order. `store`: fleet's
    Redis, where the phones' REST locks are (None only where no collector or worker shares one with this run)."""
    chosen = [inv.site(s) for s in sites] if sites else list(inv.sites)
    rows: list[Check] = []
    for site in chosen:
        rows.append(check_boot_server(site, secrets, timeout))
        router = check_router(site, secrets)
        if router is not None:
            rows.append(router)
        rows.extend(check_collector(site))
        with ThreadPoolExecutor(max_workers=max(1, min(concurrency, len(site.phones) or 1))) as pool:
            for row in pool.map(lambda p, s=site: check_phone(s, p, inv, secrets, timeout, store), site.phones):
                rows.append(row)
                if progress:
                    progress(1)
    return rows


def device_count(inv: Inventory, sites: Iterable[str] | None = None) -> int:
    chosen = [inv.site(s) for s in sites] if sites else list(inv.sites)
    return sum(len(s.phones) for s in chosen)
