"""What a firmware family is: its profile (Family), its catalogue entries (Param), the interface names, the errors.

Shapes only, and the table of the families registered so far (FAMILIES), which
Family.check consults to tell "another family has this parameter" from "no
family has it". The table is filled by the package (soundpoint.families: its
table of family modules, and `register` for plug-ins); the family modules
import from here, never from the package, so nothing here imports a family.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import cached_property

# Interfaces a family may offer (Family.interfaces).
CHECK_SYNC = "check-sync"             # SIP NOTIFY Event: check-sync
WEB_UI = "web-ui"                     # the web configuration utility
WEB_REBOOT = "web-reboot"             # POST /form-submit/Reboot on the web UI
TEL_NOTIFICATION = "telephone-notification"   # phone POSTs LineRegistrationEvent ... to apps.telNotification.URL
STATE_POLLING = "state-polling"       # GET /polling/*Handler (or pushed to apps.statePolling.URL)
SYSLOG_CONFIG = "syslog-config"       # syslog server set by configuration files (device.syslog.*)
SYSLOG_BOOTROM = "syslog-bootrom"     # syslog server set only in the bootROM (not by fleet)
LOG_UPLOAD = "log-upload"             # <MAC>-app.log uploaded to the boot server
REST = "rest"                         # UC Software 5.x REST API

REBOOT_METHODS = ("check-sync", "web", "rest")


class ParameterError(ValueError):
    """An unknown parameter or a value out of range; the message names the parameter."""


class FamilyError(ValueError):
    """An unknown family name, or a model that cannot run a family; the message says why."""


@dataclass(frozen=True)
class Param:
    """One catalogue entry. `name` uses {x} for the registration, {y} for the server, {n} for other indices."""
    name: str
    kind: str                       # int, bool01, str, enum, host
    default: str | None = None
    lo: int | None = None
    hi: int | None = None
    choices: tuple[str, ...] = ()
    also: tuple[int, ...] = ()      # single values allowed outside lo..hi (failBack.timeout 0 = never)
    secret: bool = False            # a password: only `secret:`/`env:` references (fleet.phoneconf.secrets)
    source: str = ""                # guide and version the entry comes from

    @cached_property
    def regex(self) -> re.Pattern:
        text = re.escape(self.name)
        for key in ("x", "y", "n"):
            text = text.replace(re.escape("{" + key + "}"), f"(?P<{key}>[0-9]+)")
        return re.compile("^" + text + "$")


@dataclass(frozen=True)
class Family:
    """What one firmware family accepts and offers."""
    name: str
    title: str
    catalogue: tuple[Param, ...]
    expires_min: int                       # smallest reg.x.server.y.expires the phone accepts
    interfaces: frozenset[str]
    reboot_methods: tuple[str, ...]        # what fleet may use, default first
    models: frozenset[str]
    failover_controls: bool                # failOver.failBack.*, reRegisterOn, registerRetry.* exist
    max_registrations: int = 34            # reg.x: x in 1..this
    # reg.x.server.y / voIpProt.server.y: y in 1..this. "Multiple servers can be listed starting with x=1 to 4 for
    # fault tolerance" (UC Software 4.1.6 guide, VoIP Server Parameters, voIpProt.server.x.address); the SIP 1.4-3.1
    # guides print "x=1, 2, ..." with no bound, so 4 everywhere
    max_servers: int = 4
    max_index: int = 20                    # other indexed names ({n}: requestValidation.n)
    notes: tuple[str, ...] = ()            # what fleet cannot do on this family, for people
    # parameters a check-sync with alwaysReboot=0 applies without a restart (a regex on the name; "" none): the
    # UC Software guides' "Change Causes Restart: No" for reg.x.* (*unconfirmed* here: not read in a guide by us,
    # taken from issue 16; conformance entry checksync-uc-live-apply). SIP 2.x/3.x: the guides say nothing.
    live_params: str = ""
    _index: dict = field(default_factory=dict, compare=False, repr=False)

    @property
    def default_reboot(self) -> str:
        return self.reboot_methods[0]

    @property
    def rest(self) -> bool:
        return REST in self.interfaces

    @property
    def call_state_source(self) -> str | None:
        """Where a call check asks: "rest", "state-polling", or None (the family cannot tell)."""
        return "rest" if self.rest else STATE_POLLING if STATE_POLLING in self.interfaces else None

    def lookup(self, name: str) -> Param | None:
        """The catalogue entry for a parameter name, or None (indices are not range-checked here)."""
        if name in self._index:
            return self._index[name]
        found = next((p for p in self.catalogue if p.regex.match(name)), None)
        if len(self._index) < 20000:
            self._index[name] = found
        return found

    def index_problem(self, name: str) -> str | None:
        """Why the indices in `name` are out of range for this family, or None."""
        p = self.lookup(name)
        if p is None:
            return None
        m = p.regex.match(name)
        for key, top, what in (("x", self.max_registrations, "registrations"), ("y", self.max_servers, "servers"),
                               ("n", self.max_index, "entries")):
            if key in m.groupdict() and not 1 <= int(m.group(key)) <= top:
                return f"{name}: {what} are numbered 1 to {top} on {self.name}"
        return None

    def check(self, name: str, value: object) -> str:
        """The value as the phone will read it, or ParameterError naming the parameter and the range."""
        p = self.lookup(name)
        if p is None:
            if any(f.lookup(name) for f in FAMILIES.values()):
                raise ParameterError(f"{name}: not supported by firmware family {self.name}")
            raise ParameterError(f"{name}: not a parameter this tool manages (check the spelling)")
        problem = self.index_problem(name)
        if problem:
            raise ParameterError(problem)
        text = str(value).strip()
        if p.secret:
            return text
        if p.kind == "int":
            if text == "" and p.default is None:
                return text
            if not re.fullmatch(r"-?[0-9]+", text):
                raise ParameterError(f"{name}={text!r}: expected an integer")
            lo = max(self.expires_min, p.lo or 0) if name.endswith(".expires") else p.lo
            n = int(text)
            if n not in p.also and ((lo is not None and n < lo) or (p.hi is not None and n > p.hi)):
                extra = "".join(f"{a} or " for a in p.also)
                raise ParameterError(f"{name}={text}: out of range {extra}{lo}..{p.hi} for firmware family {self.name}")
        elif p.kind == "bool01":
            if text not in ("0", "1"):
                raise ParameterError(f"{name}={text!r}: expected 0 or 1")
        elif p.kind == "enum":
            if text not in p.choices:
                raise ParameterError(f"{name}={text!r}: expected one of {', '.join(p.choices)}")
        elif p.kind == "host":
            if not re.fullmatch(r"[A-Za-z0-9.:\-\[\]]*", text):
                raise ParameterError(f"{name}={text!r}: expected an IP address or host name")
        return text

    def runs_on(self, model: str) -> bool:
        return model in self.models


# Every registered family by name, oldest first: the one table, filled by soundpoint.families (its module table at
# import, `register`/`unregister` for plug-ins) and read through it (families.FAMILIES is this dict).
FAMILIES: dict[str, Family] = {}
