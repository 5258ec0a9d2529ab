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
- `cut(spec)` is a no-op for an outage already restored or cancelled, and a
  repeated cut adds nothing;
- `restore(outage_id, mode)` is idempotent; one that arrives before its cut
  cancels the outage, so the late cut does nothing;
- both answer with what the router says happened (`RouterOutcome`), never with
  what the caller hoped.
"""
from __future__ import annotations

import importlib
import re
from dataclasses import asdict, dataclass, field
from types import ModuleType
from typing import TYPE_CHECKING, Protocol

from fleet.config import platforms

if TYPE_CHECKING:   # only for annotations
    from fleet.config.inventory import Credentials, Router

OUTAGE_MODES = ("link-down", "drop", "degrade", "dns-fail")
OUTAGE_ID = re.compile(r"^[A-Za-z0-9_-]{8,64}$")

# What a cut/restore can report. "cancelled": the restore came first, nothing was cut.
CUT_OUTCOMES = ("cut", "already-cut", "cancelled", "already-restored")
RESTORE_OUTCOMES = ("restored", "already-restored", "cancelled-before-cut")


@dataclass(frozen=True)
class OutageSpec:
    """One requested cut. Values are checked here, so no driver ever formats an unchecked one into a command."""
    outage_id: str
    mode: str
    max_duration: int
    loss: float = 0.0
    delay_ms: int = 0
    rate_kbit: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.outage_id, str) or not OUTAGE_ID.match(self.outage_id):
            raise ValueError("outage_id must be 8-64 characters of letters, digits, '_' or '-'")
        if self.mode not in OUTAGE_MODES:
            raise ValueError(f"unknown outage mode {self.mode!r}")
        for name, value, low, high in (("max_duration", self.max_duration, 1, 86400), ("delay_ms", self.delay_ms, 0, 60000),
                                       ("rate_kbit", self.rate_kbit, 0, 10_000_000)):
            if type(value) is not int or not low <= value <= high:
                raise ValueError(f"{name} must be an integer in {low}..{high}")
        if type(self.loss) not in (int, float) or not 0.0 <= self.loss <= 1.0:
            raise ValueError("loss must be a fraction in 0..1")
        if self.mode == "degrade" and not (self.loss or self.delay_ms or self.rate_kbit):
            raise ValueError("a degrade outage needs loss, delay_ms or rate_kbit")


@dataclass
class RouterOutcome:
    """What the router itself reported for a cut or a restore."""
    outcome: str
    deadman: str = ""            # how the router-side restore is armed ("pid 1234, fires in 300 s"), or why there is none
    by: str = ""                 # for a restore already done: who did it ("controller", "deadman")
    state: dict = field(default_factory=dict)
    # when the router answered the cut or restore itself, before any state query: the outage's real edge
    # (a state query over SSH takes as long again, and a phone can re-register inside it)
    done_at: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


class RouterDriver(Protocol):
    name: str
    modes: tuple[str, ...]
    has_deadman: bool

    def cut(self, spec: OutageSpec) -> RouterOutcome: ...
    def restore(self, outage_id: str, mode: str) -> RouterOutcome: ...
    def wan_state(self, outage_id: str | None = None) -> dict: ...
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
