"""Router drivers: one module per platform, chosen by the inventory's `driver` name (fleet.config.platforms).

A new router platform is one new module here plus its entry in the platform
table, fleet.config.platforms (module path, interface rule, SSH, capture
command). Each module exposes `connect(router, credentials) -> RouterDriver`
and `MODES` (the outage modes it can make). The inventory checks a router's
`driver` against that table when it is loaded, without importing a driver, so
a misspelt name is an error naming the file and line, not an ImportError
inside a worker mid-experiment; the module is imported here on first use.

An outage is a small protocol with an identity, because a cut and its restore
travel as separate tasks and can arrive in any order (a cut still queued when
the controller gave up on it, a redelivered cut, a restore sent on Ctrl-C):
- `cut(outage)` is a no-op for an outage already restored or cancelled, and a
  repeated cut adds nothing;
- `restore(outage)` is idempotent; one that arrives before its cut cancels the
  outage, so the late cut does nothing;
- both answer with what the router says happened (`RouterOutcome`, its state a
  `WanState`), never with what the caller hoped.
The outage itself (`fleet.base.outage.Outage`) is checked before it gets here;
turning it into shell arguments or SNMP sets is the driver's job alone.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, fields
from types import ModuleType
from typing import TYPE_CHECKING, Protocol

from fleet.base.outage import OUTAGE_ID, OUTAGE_MODES, Outage, WanState
from fleet.config import platforms

if TYPE_CHECKING:   # only for annotations
    from fleet.config.inventory import Credentials, Router

__all__ = ["OUTAGE_ID", "OUTAGE_MODES", "Outage", "WanState", "CUT_OUTCOMES", "RESTORE_OUTCOMES",
           "RouterOutcome", "RouterDriver", "check_driver", "driver_module", "connect", "supported_modes"]

# What a cut/restore can report. "cancelled": the restore came first, nothing was cut.
CUT_OUTCOMES = ("cut", "already-cut", "cancelled", "already-restored")
RESTORE_OUTCOMES = ("restored", "already-restored", "cancelled-before-cut")


@dataclass
class RouterOutcome:
    """What the router itself reported for a cut or a restore."""
    outcome: str
    deadman: str = ""            # how the router-side restore is armed ("pid 1234, fires in 300 s"), or why there is none
    by: str = ""                 # for a restore already done: who did it ("controller", "deadman")
    state: WanState | None = None  # the WAN as the driver read it right after
    # when the router answered the cut or restore itself, before any state query: the outage's real edge
    # (a state query over SSH takes as long again, and a phone can re-register inside it)
    done_at: float = 0.0

    def to_dict(self) -> dict:
        """The JSON form a task result carries; `state` as `WanState.to_dict()` (read back with `WanState.from_dict`)."""
        return {f.name: getattr(self, f.name) for f in fields(self)} | {"state": self.state.to_dict() if self.state else {}}


class RouterDriver(Protocol):
    name: str
    modes: tuple[str, ...]
    has_deadman: bool

    def cut(self, outage: Outage) -> RouterOutcome: ...
    def restore(self, outage: Outage) -> RouterOutcome: ...
    def wan_state(self, outage_id: str | None = None) -> WanState: ...
    def close(self) -> None: ...


def check_driver(name: str) -> str:
    """`name` if it is a registered platform (fleet.config.platforms); otherwise a ValueError listing the known."""
    return platforms.check_driver(name)


def driver_module(name: str) -> ModuleType:
    """The module registered for `name` (imported on first use: the SNMP one pulls in pysnmp)."""
    return importlib.import_module(platforms.get(name).module)


def connect(router: Router, credentials: Credentials) -> RouterDriver:
    return driver_module(router.driver).connect(router, credentials)


def supported_modes(driver: str) -> tuple[str, ...]:
    return driver_module(driver).MODES
