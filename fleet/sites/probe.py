"""Read-only reachability checks for a first day on a site: can fleet reach every device with what the inventory says?

Every check here only reads: the boot server is logged into and the master
files the phones would read are read (never written), the router gets its own
read-only state command (SSH, with its host key verified) or SNMP reads, each PoE switch reads the
ports its phones name, each
phone answers one read asked by its family's control (fleet.phones: REST device
info, state polling with its own login, or the web UI; never a reboot, a setting
or a call), and the collectors' listening addresses are bound and released at
once, or found held by the site's own running collector (it reports itself in
fleet's Redis: fleet.state.collectors). A failed check names the device and why,
and never carries a secret (driver errors never hold passwords).
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
from fleet.drivers.publish import Publisher, open_publisher
from fleet.state import collectors as registry
from fleet.drivers import router as routers
from fleet.drivers import switch as switches
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
    """Log in and find the master every phone of the site reads (soundpoint.bootfiles.master_order): the one named
    in the boot-server address, else its own `<MAC>.cfg`, else the default. Proves address, credentials and
    directory without writing; a directory where no phone finds its file is the wrong one."""
    url = site.boot_server.url
    target = redact_url(url)
    try:
        creds = secrets.credentials(site.boot_server.credentials) if site.boot_server.credentials else Credentials()
        pub = open_publisher(url, creds, timeout)
        try:
            ok, found = _masters(pub, site, target)
        finally:
            pub.close()
    except Exception as exc:  # a probe reports, never crashes: every device gets its row
        return Check(site.name, "boot server", target, False, _device_error(exc))
    if ok and url.startswith(("http://", "https://")):
        found += "; the write password is first used by a rollout (reads need none)"
    return Check(site.name, "boot server", target, ok, found)


def _masters(pub: Publisher, site: Site, target: str) -> tuple[bool, str]:
    """(every phone finds a master, what was read). The shared masters first (one read covers every phone), the
    phones' own files only when neither is there; reads only, as the phones would."""
    named = site.boot_server.master_file
    if named:
        data = pub.read(named)
        if data is not None:
            return True, f"read {named}, the master named in the boot-server address ({len(data)} bytes)"
    fallback = f"logged in; no {named} there: phones fall back to <MAC>.cfg, then {DEFAULT_MASTER}; " if named else ""
    default = pub.read(DEFAULT_MASTER)
    if default is not None:
        return True, f"{fallback}read {DEFAULT_MASTER} ({len(default)} bytes), read by every phone without its own <MAC>.cfg"
    missing = [p.mac for p in site.phones if pub.read(bootfiles.master_name(p.mac)) is None]
    if len(missing) == len(site.phones):      # a site without phones too: nothing there a phone would read
        looked = " and ".join(([named] if named else []) + [DEFAULT_MASTER] +
                              ([f"the {len(missing)} phones' <MAC>.cfg"] if missing else []))
        return False, f"no <MAC>.cfg nor master file at {target}: is the boot server path right? (looked for {looked})"
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        return False, (f"{fallback}no <MAC>.cfg nor master file for {len(missing)} of {len(site.phones)} phones at "
                       f"{target} ({shown}): they boot without the site's files, and a push to them fails (fleet adds "
                       f"its file to the master a phone reads, it does not invent one)")
    return True, f"{fallback}read the <MAC>.cfg of every phone ({len(site.phones)}); no {DEFAULT_MASTER} there"


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


def check_switches(site: Site, secrets: Secrets) -> list[Check]:
    """Each PoE switch read at every port a phone of the site names (pethPsePortAdminEnable and the detection
    status): the login, and that each port exists, checked before any power cycle needs them. Reads only."""
    rows = []
    for sw in site.switches:
        target = f"{sw.driver} {sw.address}:{sw.port}"
        ports = [p.poe for p in site.phones if p.poe is not None and p.poe.switch == sw.name]
        try:
            drv = switches.connect(sw, secrets.credentials(sw.credentials))
            try:
                states = [drv.port_state(port) for port in ports]
            finally:
                drv.close()
        except Exception as exc:
            rows.append(Check(site.name, f"switch {sw.name}", target, False, _device_error(exc)))
            continue
        shown = ", ".join(f"{st.port} {'on' if st.enabled else 'OFF'} ({st.detection})" for st in states[:8])
        more = f" and {len(states) - 8} more" if len(states) > 8 else ""
        rows.append(Check(site.name, f"switch {sw.name}", target, True,
                          f"{len(states)} port(s) read: {shown}{more}" if states else "no phone names a port of it"))
    return rows


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
    if store is not None and found.firmware:
        # the phone's own word on its firmware, where `fleet status` and reports read it (as a REST poll records it)
        store.set_phone_info({phone.mac: {"firmware": found.firmware}})
    return Check(site.name, device, target, found.ok, found.describe())


def _bindable(address: str, kind: int) -> tuple[int, str] | None:
    """None when the address can be listened on now; otherwise (errno, why not)."""
    host, _, port = address.rpartition(":")
    host = host.strip("[]")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, kind)
    try:
        sock.bind((host, int(port)))
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            return exc.errno, "in use"
        if exc.errno == errno.EADDRNOTAVAIL:
            return exc.errno, "not an address of this host"
        if exc.errno == errno.EACCES:
            return exc.errno, "permission denied (ports below 1024 need root or CAP_NET_BIND_SERVICE)"
        return exc.errno or 0, exc.strerror or type(exc).__name__
    finally:
        sock.close()
    return None


def _taken(address: str, code: int, why: str, seen: registry.Sighting | None, asked: bool) -> tuple[bool, str]:
    """(ok, detail) for an address that cannot be bound here: fine when the site's own fleet collector, alive,
    listens there (fleet.state.collectors), a failure naming what holds it otherwise. `asked`: the registry was read
    (False: no Redis to ask)."""
    if seen is not None and seen.record.listens_on(address):
        collector = f"this site's fleet collector ({seen.describe()})"
        if not seen.alive:
            return False, f"{why}, not by {collector}: is something else listening there?"
        if seen.record.host != socket.gethostname():
            return True, f"listened on by {collector}: ok (not checked from this host)"
        if code != errno.EADDRINUSE:
            return False, f"{why}; {collector} reports listening there"
        if registry.process_exists(seen.record.pid):
            return True, f"in use by {collector}: ok"
        return False, f"{why}, not by {collector}: that process is gone"
    if seen is not None:
        return False, (f"{why}; this site's fleet collector ({seen.describe()}) listens on {seen.record.syslog} and "
                       f"{seen.record.events}, not here: restart it after changing the inventory's collector addresses")
    if code != errno.EADDRINUSE:
        return False, why
    if not asked:
        return False, (f"{why} (no fleet Redis to ask whether by this site's fleet collector: "
                       "set FLEET_REDIS_URL to the collectors' Redis)")
    return False, f"{why} by another program: no fleet collector of this site has reported in fleet's Redis"


def check_collector(site: Site, store: Store | None = None) -> list[Check]:
    """Can the site's collector listen on its addresses here? Free, or held by the site's own running collector
    (as it reports in `store`), passes; held by anything else fails."""
    seen, asked = None, store is not None
    if store is not None:
        try:
            seen = registry.sighting(store, site.name)
        except Exception:   # Redis away: answer as without it
            asked = False
    out = []
    for what, address, kind in (("collector syslog", site.collector.syslog, socket.SOCK_DGRAM),
                                ("collector events", site.collector.events, socket.SOCK_STREAM)):
        taken = _bindable(address, kind)
        ok, detail = (True, "free") if taken is None else _taken(address, *taken, seen, asked)
        out.append(Check(site.name, what, address, ok, detail))
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
        rows.extend(check_switches(site, secrets))
        rows.extend(check_collector(site, store))
        with ThreadPoolExecutor(max_workers=max(1, min(concurrency, len(site.phones) or 1))) as pool:
            for row in pool.map(lambda p, s=site: check_phone(s, p, inv, secrets, timeout, store), site.phones):
                rows.append(row)
                if progress:
                    progress(1)
    return rows


def device_count(inv: Inventory, sites: Iterable[str] | None = None) -> int:
    chosen = [inv.site(s) for s in sites] if sites else list(inv.sites)
    return sum(len(s.phones) for s in chosen)
