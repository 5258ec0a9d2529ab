"""What a worker process knows: its inventory (parsed once) and its Redis store (one connection pool).

Task messages carry ids only (site name, MAC, rollout id); the work modules
look everything else up here, so no secret ever travels in a message.
"""
from __future__ import annotations

import functools
import os
import threading

from fleet.config import inventory as inv_mod
from fleet.state.store import RolloutStore, Store

_lock = threading.Lock()


@functools.lru_cache(maxsize=4)
def _inventory(path: str) -> tuple[inv_mod.Inventory, inv_mod.Secrets]:
    inv = inv_mod.load(path)
    return inv, inv_mod.Secrets(inv)


def context() -> tuple[inv_mod.Inventory, inv_mod.Secrets]:
    """The worker's inventory, parsed once: without the lock, a thread pool's first tasks each parse it at once."""
    path = os.environ.get("FLEET_INVENTORY")
    if not path:
        raise RuntimeError("FLEET_INVENTORY is not set for this worker (start it with `fleet worker --inventory FILE`)")
    with _lock:
        return _inventory(path)


@functools.lru_cache(maxsize=2)
def _stores(url: str) -> tuple[Store, RolloutStore]:
    store = Store(url)
    return store, RolloutStore(store)


def stores() -> tuple[Store, RolloutStore]:
    """One Redis connection pool per worker process (FLEET_REDIS_URL), not one per task."""
    return _stores(os.environ["FLEET_REDIS_URL"])


def reset() -> None:
    """Forget the parsed inventory and the store (a test that plays the worker changes FLEET_INVENTORY)."""
    _inventory.cache_clear()
    _stores.cache_clear()
