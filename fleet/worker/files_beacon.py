"""A running worker's announcement of the inventory and secrets file it uses (their hashes), kept fresh in Redis.

The CLI compares its own files with these before an experiment or rollout
(fleet.cli.common.check_worker_files): a worker on other files would act with
credentials or phones the operator does not see. The entry is refreshed every
TTL/3 s by a thread of the worker's main process, lapses TTL s after the worker
is gone (killed, host lost), and is removed at a clean stop.
"""
from __future__ import annotations

import logging
import os
import socket
import threading

from soundpoint.redact import redact

from fleet.config import fingerprint
from fleet.config.inventory import Inventory
from fleet.state.store import Store

log = logging.getLogger(__name__)
TTL_S = 30.0


class FilesBeacon:
    """Announces `inventory`'s digest for each of `sites` until `stop()`."""

    def __init__(self, store: Store, inventory: Inventory, sites: list[str], node: str, ttl: float = TTL_S) -> None:
        self.store, self.sites, self.ttl = store, sites, ttl
        self.worker = f"{socket.gethostname()}:{os.getpid()}"
        self.info = fingerprint.of(inventory).to_dict() | {"node": node, "host": socket.gethostname(), "pid": os.getpid()}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fleet-files-beacon", daemon=True)

    def announce(self) -> None:
        for site in self.sites:
            self.store.announce_worker_files(site, self.worker, self.info, self.ttl)

    def start(self) -> "FilesBeacon":
        self.announce()          # before the worker serves its first task: a CLI started right after sees it
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.ttl / 3):
            try:
                self.announce()
            except Exception as exc:  # Redis away for a moment: the next refresh tries again, the entry may lapse
                log.warning("could not announce this worker's files: %s: %s", type(exc).__name__, redact(str(exc)))

    def stop(self) -> None:
        self._stop.set()
        try:
            for site in self.sites:
                self.store.forget_worker_files(site, self.worker)
        except Exception:  # gone with Redis: the entry lapses by itself
            pass
