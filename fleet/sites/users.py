"""Registration users from the site's own boot files, for phones whose configuration fleet knows has none.

Wire attribution recognises a phone's REGISTER by the user each line registers
as (`reg.x.address`). Fleet knows what it pushed and what the inventory says;
a site that sets `reg.x.address` only in its own files (a shared site.cfg, a
per-phone file in CONFIG_FILES, an override file written from the phone's web
UI) leaves fleet without it, and a phone without a known user can then only be
recognised by its source address. This reads those files, read only, the way
the phone does and the way the rollout's dry run surveys them
(`site_files.survey`): the master the phone reads, override files above
everything, then its CONFIG_FILES in order (the first file that sets a
parameter wins). Only `reg.x.address` is taken, and only where the known
configuration lacks `reg.1.address`: the rest of a site's files is the rollout's
business, and a phone whose user fleet knows costs the boot server nothing.
"""
from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable

from soundpoint import bootfiles

from fleet.sites import overrides
from soundpoint.redact import redact
from fleet.drivers.publish import Publisher
from fleet.sites.files import read_master

log = logging.getLogger(__name__)
ADDRESS = re.compile(r"reg\.[1-9][0-9]?\.address")
TTL_S = 900.0          # how long what a phone's files said is trusted (they change with a rollout, rarely otherwise)


def registration_addresses(pub: Publisher, boot_url: str, mac: str, model: str | None,
                           open_dir: Callable[[str], Publisher]) -> dict[str, str]:
    """Every non-empty `reg.x.address` the phone `mac` reads from the boot server `pub` (at `boot_url`)."""
    name, data = read_master(pub, mac)
    master = bootfiles.parse_master(name, data)
    layers = [params for _, params in overrides.read(pub, boot_url, mac, master, open_dir).files]
    for entry in master.config_files_for(model):
        fname = bootfiles.expand(entry, mac)
        if "://" in fname:
            continue            # a file on another server: not this boot server's to read
        try:
            raw = pub.read(fname)
        except Exception as exc:  # a name the publisher refuses or cannot read: the phone would skip it as well
            log.debug("%s: %s not read (%s)", mac, fname, redact(str(exc)))
            continue
        if raw is None:
            continue
        try:
            layers.append(bootfiles.parse_parameters(fname, raw))
        except bootfiles.BootFileError as exc:
            log.debug("%s: %s", mac, redact(str(exc)))
    out: dict[str, str] = {}
    for params in layers:                   # highest precedence first: the first value found wins
        for k, v in params.items():
            if ADDRESS.fullmatch(k) and k not in out:
                out[k] = v
    return {k: v for k, v in out.items() if str(v).strip()}


class SiteUsers:
    """`fill(params_by_mac)`: the phones' known configuration with the `reg.x.address` values their site's
    files give, for the phones it lacks `reg.1.address` for. A boot server that cannot be read leaves the
    configuration as it was (logged); each phone's answer is kept TTL_S, so targets rebuilt every minute do
    not read the boot server every minute."""

    def __init__(self, boot_url: str, open_pub: Callable[[str], Publisher], models: dict[str, str | None],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.boot_url, self.open_pub, self.models, self.clock = boot_url, open_pub, models, clock
        self.cache: dict[str, tuple[float, dict[str, str]]] = {}
        self.lock = threading.Lock()
        self.reads = 0          # boot server passes made (tests and diagnostics)

    def fill(self, params_by_mac: dict[str, dict[str, str]]) -> dict[str, dict[str, str]]:
        lacking = [m for m, p in params_by_mac.items() if not str(p.get("reg.1.address") or "").strip()]
        if not lacking:
            return params_by_mac
        with self.lock:
            now = self.clock()
            stale = [m for m in lacking if m not in self.cache or now - self.cache[m][0] >= TTL_S]
            if stale:
                self._read(stale, now)
            found = {m: self.cache.get(m, (now, {}))[1] for m in lacking}
        out = dict(params_by_mac)
        for mac, addresses in found.items():
            extra = {k: v for k, v in addresses.items() if not str(params_by_mac[mac].get(k) or "").strip()}
            if extra:
                out[mac] = params_by_mac[mac] | extra
        return out

    def _read(self, macs: list[str], now: float) -> None:
        self.reads += 1
        try:
            pub = self.open_pub(self.boot_url)
        except Exception as exc:  # the boot server is away: try again after TTL_S, attribute by address meanwhile
            log.warning("cannot open the boot server for registration users (%s)", redact(str(exc)))
            for mac in macs:
                self.cache[mac] = (now, self.cache.get(mac, (now, {}))[1])
            return
        try:
            for mac in macs:
                try:
                    self.cache[mac] = (now, registration_addresses(pub, self.boot_url, mac, self.models.get(mac),
                                                                   self.open_pub))
                except Exception as exc:  # no master, a malformed file: this phone stays known by its address
                    log.warning("%s: registration users not read from the boot server (%s)", mac, redact(str(exc)))
                    self.cache[mac] = (now, self.cache.get(mac, (now, {}))[1])
        finally:
            pub.close()
