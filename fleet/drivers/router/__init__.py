"""Router drivers: one module per kind, found by the inventory's `driver` name (no closed class map).

Each module exposes `connect(router, credentials) -> RouterDriver`.
"""
from __future__ import annotations

import importlib
from typing import Protocol

from ...inventory import Credentials, Router

OUTAGE_MODES = ("link-down", "drop", "degrade", "dns-fail")


class RouterDriver(Protocol):
    name: str
    modes: tuple[str, ...]

    def cut(self, mode: str, *, loss: float = 0.0, delay_ms: int = 0) -> None: ...
    def restore(self, mode: str) -> None: ...
    def arm_deadman(self, mode: str, seconds: int) -> str: ...
    def disarm_deadman(self, token: str | None = None) -> None: ...
    def wan_state(self) -> dict: ...
    def close(self) -> None: ...


def connect(router: Router, credentials: Credentials) -> RouterDriver:
    module = importlib.import_module(f"{__name__}.{router.driver}")
    return module.connect(router, credentials)


def supported_modes(driver: str) -> tuple[str, ...]:
    return importlib.import_module(f"{__name__}.{driver}").MODES
