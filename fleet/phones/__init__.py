"""The phone-control seam: what a rollout asks of one phone, answered by the module of the phone's firmware family.

Each family (soundpoint.families) has one module exporting `Control`, named in
BACKENDS and found by the family's name, as labgrid finds its power backends, so
a new family is one profile in soundpoint/families plus one module here (and a
line in each table); a family from outside this tree is added at run time with
soundpoint.families.register and `register` here. Callers never ask which model
or firmware a phone has: they ask the control.

Every answer fails closed: a call check that gets no answer, an error or an
answer it cannot read says "unknown", and a phone in state unknown is deferred,
never rebooted.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Callable, Collection, Literal, Protocol

from soundpoint import families

from fleet.drivers.control.call_check import CallCheck  # noqa: F401  (part of this seam's answers)
from fleet.drivers.errors import AuthRefused, DeviceRefused, DeviceTimeout, DeviceUnreachable, DriverError, MalformedAnswer
from fleet.config.inventory import Credentials, Phone

# family name -> the module exporting its `Control` (".name": a module of this package; a dotted name: any module,
# for a family registered at run time). One control per family of soundpoint.families and no other: checked for
# every family at import, and for the one concerned when a control is registered or a phone's control asked for.
BACKENDS = {"sip-2.x": ".sip2", "sip-3.x": ".sip3", "uc-4.0": ".ucs4", "uc-5.x": ".ucs5"}
_SHIPPED = frozenset(BACKENDS)


class NoControl(LookupError):
    """A firmware family without a phone control (or a control without a family): a plug-in registered only half."""


def _mismatch() -> str:
    """Why BACKENDS and the registered families disagree, or "" when every family has exactly one control."""
    no_control = [n for n in families.NAMES if n not in BACKENDS]
    no_family = [n for n in BACKENDS if n not in families.FAMILIES]
    return "; ".join(([f"no phone control for {', '.join(no_control)} (fleet.phones.register)"] if no_control else [])
                     + ([f"a phone control for {', '.join(no_family)}, which soundpoint.families does not know"]
                        if no_family else []))


def register(family: str, module: str) -> None:
    """Give a family registered in soundpoint.families (a plug-in's, a test's) its control: `module` is the
    importable name of a module exporting `Control` (a class taking a PhoneAccess, answering as PhoneControl).
    Refused for an unknown family or one that already has a control."""
    families.get(family)                      # FamilyError for a family soundpoint.families does not know
    if family in BACKENDS:
        raise NoControl(f"firmware family {family} already has a phone control ({BACKENDS[family]})")
    BACKENDS[family] = module


def unregister(family: str) -> None:
    """Forget the control `register` gave a family (a test undoing its fake family); shipped ones stay."""
    if family in _SHIPPED:
        raise NoControl(f"the phone control of {family} ships with fleet and cannot be unregistered")
    BACKENDS.pop(family, None)


if _mismatch():
    raise ImportError(f"fleet.phones.BACKENDS: {_mismatch()}")


# called with a reboot method's name ("check-sync", "web", "rest") just before that method is sent
Announce = Callable[[str], None]


Problem = Literal["", "timeout", "refused", "auth", "error-status", "malformed", "wrong-device", "error"]


@dataclass(frozen=True)
class Identity:
    """A read-only answer to "is this phone there, does it take our login, is it the phone the inventory says?"

    `method` says how it was asked (request and which login, never the login itself); `problem` is empty when
    the phone answered as expected, else what failed; `detail` what it answered, or why it failed, for a report.
    """
    method: str
    problem: Problem = ""
    detail: str = ""
    firmware: str = ""    # the version the phone reported about itself ("" when it said none): fleet status shows it

    @property
    def ok(self) -> bool:
        return not self.problem

    def describe(self) -> str:
        return f"{self.method}: {self.detail}" if self.ok else f"{self.method}: {self.problem}: {self.detail}"


def identity_failure(method: str, exc: DriverError) -> Identity:
    """A driver error as the Identity problem it is (the error's own words name no secret)."""
    kind: Problem = ("refused" if isinstance(exc, DeviceUnreachable) else "timeout" if isinstance(exc, DeviceTimeout)
                     else "auth" if isinstance(exc, AuthRefused) else "error-status" if isinstance(exc, DeviceRefused)
                     else "malformed" if isinstance(exc, MalformedAnswer) else "error")
    return Identity(method, kind, exc.message[:300])


def shown(text: str, limit: int = 40) -> str:
    """A string a phone sent, fit for a report line: at most `limit` characters, control characters as '?'."""
    return "".join(c if c.isprintable() else "?" for c in str(text)[:limit])


def same_mac(answered: str, mac: str) -> bool:
    """A MAC address as a phone writes it (upper case, maybe with separators) against the inventory's."""
    return "".join(c for c in answered.lower() if c in "0123456789abcdef") == mac.lower()


@dataclass
class PhoneAccess:
    """What a control needs to reach one phone: the inventory's phone, its admin login, its effective parameters
    (secret ones as references) and how to resolve them, and the store (for pushed state and events)."""
    phone: Phone
    creds: Credentials
    params: dict[str, str] = field(default_factory=dict)
    resolve: Callable[[str, str], str] | None = None
    store: object | None = None

    def param(self, name: str, default: str = "") -> str:
        return str(self.params.get(name, default) or default)

    def secret(self, name: str) -> str:
        """A secret parameter's value (resolved from its reference), or "" when unset or unresolvable."""
        value = self.param(name)
        if not value or self.resolve is None:
            return "" if value.startswith(("secret:", "env:")) else value
        try:
            return self.resolve(name, value)
        except (KeyError, ValueError):
            return ""


class PhoneControl(Protocol):
    family: families.Family

    def call_check(self) -> CallCheck:
        """Idle, in a call, or unknown (no answer, an error, a family that cannot tell)."""

    def reboot(self, announce: Announce | None = None, fallback: bool = True) -> str:
        """Reboot by the phone's method (inventory `reboot:`, else the family's default, then its fallback unless
        `fallback` is False); returns how, for reports. `announce(method)` is called just before each method is
        sent, so a caller that may die can leave word of what may have reached the phone (rebooted_since's
        `tried`). Raises DriverError naming the phone when the phone refuses or does not answer.
        A control may also offer `reboot_answered_at() -> float | None`: when the phone's answer to the reboot
        arrived, from which a registration may prove the phone came back."""

    def may_stay_up(self, sent: Collection[str], params: dict[str, str]) -> bool:
        """The reboot methods `sent` may leave the phone running the new files without a reboot."""

    def reports_shutdown(self, params: dict[str, str]) -> bool:
        """A reboot of this phone leaves a shutdown event fleet's store sees (line_down_at)."""

    def rebooted_since(self, since: float, params: dict[str, str], tried: Collection[str] | None = None) -> bool:
        """Whether the reboot sent at `since` reached the phone (params: the files it was rebooted into). `tried`:
        the methods announced before the sender was lost (empty: nothing was sent); None when nobody recorded
        them, which counts as every method the phone's reboot may use, its fallback included.
        A control may also offer `reboot_seen_at() -> float | None`: after a True, the moment its answer showed
        the phone down or booting (its uptime, its shutdown event, no answer now), from which a registration
        proves the phone came back (fleet.rollout.work.confirm_reboot; without it, from `since`)."""

    def polling_credentials(self) -> Credentials:
        """The login state polling takes (apps.statePolling.*), for the collectors' poller too."""

    def identify(self, timeout: float = 5.0) -> Identity:
        """One read-only request by the family's own method and login (no reboot, no configuration, no call):
        whether the phone answers, takes the login and is the phone the inventory names. Never raises for
        what the phone does (no answer, a refusal, a malformed answer): that is the Identity's `problem`."""


def control(access: PhoneAccess) -> PhoneControl:
    """The control of the phone's family (its module found by name in BACKENDS, imported on first use)."""
    name = access.phone.family.name
    if name not in BACKENDS:
        raise NoControl(f"firmware family {name}: {_mismatch() or 'no phone control'}")
    module = importlib.import_module(BACKENDS[name], __name__)
    return module.Control(access)


def for_phone(phone: Phone, creds: Credentials, inventory=None, secrets=None, store=None) -> PhoneControl:
    """The control for an inventory phone: its effective parameters from `inventory`, resolved with `secrets`."""
    params: dict[str, str] = {}
    if inventory is not None:
        site, _ = inventory.phone(phone.mac)
        params = inventory.effective_params(site, phone)
    return control(PhoneAccess(phone, creds, params, secrets.resolve_param if secrets is not None else None, store))
