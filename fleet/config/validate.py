"""Checks for single values in input files: addresses, host:port, cron, time zones, models, parameters.

One place for them so that inventories, playbooks and lab files refuse the same
things with the same words. Each check returns the normalised value or raises
ValueError with a message meant for the person who wrote the file.
"""
from __future__ import annotations

import difflib
import ipaddress
import math
import re
from functools import lru_cache
from typing import Annotated

from pydantic import AfterValidator, BeforeValidator

from soundpoint import families

from fleet.phoneconf import polycom

MAC_RE = re.compile(r"^[0-9a-f]{12}$")
_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")
_INT = re.compile(r"^-?[0-9]+$")          # ASCII only: `\d` would let full-width digits through

# SoundPoint IP and SoundStation IP models (shared/reference/polycom.md) and the UC Software 5 models
# (VVX, Trio) the tool drives over REST. An unknown name is more likely a typo than a new phone.
PHONE_MODELS = (
    [f"SoundPoint IP {n}" for n in (300, 301, 320, 321, 330, 331, 335, 430, 450, 500, 501, 550, 560, 600, 601, 650, 670)]
    + [f"SoundStation IP {n}" for n in (4000, 5000, 6000, 7000)]
    + [f"VVX {n}" for n in (101, 150, 201, 250, 300, 301, 310, 311, 350, 400, 401, 410, 411, 450, 500, 501, 600, 601, 1500)]
    + ["Trio 8300", "Trio 8500", "Trio 8800", "Trio C60"]
)
_MODEL_KEYS = {" ".join(m.lower().split()): m for m in PHONE_MODELS}

# The only inventory values a playbook parameter may refer to. Anything else (`{site.__dict__}`,
# `{site.router}`, `{phone.credentials}`) would copy internals or secret names into a phone's file.
PLACEHOLDERS = {
    "site": ("name", "gateway"),
    "phone": ("mac", "address", "model"),
    "provider": ("name", "port"),
}
_BRACE = re.compile(r"\{([^{}]*)\}")


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def no_control(value: str, what: str = "value") -> str:
    """Printable text only: control characters in names end up in terminals, logs and XML."""
    if _CONTROL.search(value):
        raise ValueError(f"{what} contains control characters")
    return value


def strict_str(value, what: str = "value") -> str:
    """YAML reads `1001` and `true` as a number and a boolean; say so instead of guessing."""
    if isinstance(value, bool) or not isinstance(value, str):
        raise ValueError(f"expected text, found {type(value).__name__} {value!r:.40}; quote it")
    return value


def mac(value) -> str:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        raise ValueError("YAML read this MAC address as a number; quote it")
    if not isinstance(value, str):
        raise ValueError(f"MAC address must be text, found {type(value).__name__}")
    v = value.strip().lower().replace(":", "").replace("-", "")
    if not MAC_RE.match(v):
        raise ValueError(f"{value!r:.40} is not a MAC address (12 hex digits)")
    return v


def is_ip(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
        return True
    except ValueError:
        return False


def host(value, what: str = "address") -> str:
    """An IP address or a DNS host name (RFC 1123); nothing else reaches a socket or a phone's file."""
    value = strict_str(value, what)
    if is_ip(value):
        return value
    name = value[:-1] if value.endswith(".") else value
    labels = name.split(".")
    if not name or len(name) > 253 or not all(_LABEL.match(label) for label in labels):
        raise ValueError(f"{what} {value!r:.60} is neither an IP address nor a host name")
    if all(label.isdigit() for label in labels):
        raise ValueError(f"{what} {value!r:.60} is not a valid IP address")
    return value


def port(value, what: str = "port") -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{what} must be an integer")
    if not 1 <= value <= 65535:
        raise ValueError(f"{what} {value} is outside 1-65535")
    return value


def hostport(value, what: str = "address") -> tuple[str, int]:
    """`host:port` or `[v6]:port`, the port required: a silent default port is a wrong guess half the time."""
    value = strict_str(value, what)
    m = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\]:([0-9]+)", value) or re.fullmatch(r"([^:\[\]]+):([0-9]+)", value)
    if not m:
        raise ValueError(f"{what} {value!r:.60} must be host:port (port required)")
    h, p = m.group(1), int(m.group(2)) if len(m.group(2)) <= 5 else 0
    if m.re.pattern.startswith(r"\[") and not is_ip(h):
        raise ValueError(f"{what} {value!r:.60}: {h} is not an IPv6 address")
    host(h, what)
    port(p, f"{what} port")
    return h, p


def finite(value: float, what: str = "value") -> float:
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{what} must be a finite number")
    return value


# ----------------------------------------------------------------- cron and time zones
_CRON_FIELDS = (("minute", 0, 59, {}), ("hour", 0, 23, {}), ("day of month", 1, 31, {}),
                ("month", 1, 12, {m: i + 1 for i, m in enumerate(
                    ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"))}),
                ("day of week", 0, 6, {d: i for i, d in enumerate(("sun", "mon", "tue", "wed", "thu", "fri", "sat"))}))


def _cron_value(text: str, lo: int, hi: int, names: dict, what: str) -> int:
    if text.lower() in names:
        return names[text.lower()]
    if not re.fullmatch(r"[0-9]{1,2}", text):
        raise ValueError(f"{what}: {text!r} is not a number")
    n = int(text)
    if not lo <= n <= hi:
        raise ValueError(f"{what}: {n} is outside {lo}-{hi}")
    return n


def cron(expr) -> str:
    """Five fields (minute hour day-of-month month day-of-week): numbers, names, ranges, lists, steps."""
    expr = strict_str(expr, "cron")
    fields = expr.split()
    if len(fields) != 5:
        raise ValueError(f"cron {expr!r:.60} needs 5 fields (minute hour day-of-month month day-of-week), has {len(fields)}")
    values = [_cron_field(text, what, lo, hi, names) for text, (what, lo, hi, names) in zip(fields, _CRON_FIELDS)]
    days, months = values[2], values[3]
    # with day-of-week left open, a day of month must exist in one of the months, or the entry never fires (cron
    # ORs the two day fields when both are restricted, so then day-of-week alone can fire it)
    if fields[4] == "*" and not any(d <= _MONTH_DAYS[m - 1] for d in days for m in months):
        raise ValueError(f"cron {expr!r:.60} never fires: day {', '.join(map(str, sorted(days)))} of the month "
                         f"does not occur in month {', '.join(map(str, sorted(months)))}")
    return expr


_MONTH_DAYS = (31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)   # February 29 fires in leap years


def _cron_field(text: str, what: str, lo: int, hi: int, names: dict) -> set[int]:
    """The values one cron field selects; ValueError naming the field for a bad number, range or step."""
    out: set[int] = set()
    for part in text.split(","):
        base, _, step = part.partition("/")
        if step and not (re.fullmatch(r"[0-9]{1,2}", step) and 0 < int(step) <= hi - lo + 1):
            raise ValueError(f"cron {what}: bad step {step!r} in {part!r}")
        if base == "*":
            first, last = lo, hi
        else:
            a, dash, b = base.partition("-")
            first = _cron_value(a, lo, hi, names, f"cron {what}")
            last = _cron_value(b, lo, hi, names, f"cron {what}") if dash else (hi if step else first)
            if last < first:
                raise ValueError(f"cron {what}: range {base!r} runs backwards")
        out.update(range(first, last + 1, int(step) if step else 1))
    return out


@lru_cache(maxsize=1)
def _zones() -> frozenset[str]:
    from zoneinfo import available_timezones

    return frozenset(available_timezones())


def timezone(name) -> str:
    """An IANA time zone name that this machine's zone database knows."""
    name = strict_str(name, "time zone")
    zones = _zones()
    if name in zones or name == "UTC":
        return name
    if not zones:   # no database to check against: at least it must load
        try:
            from zoneinfo import ZoneInfo

            ZoneInfo(name)
            return name
        except Exception:
            pass
    close = difflib.get_close_matches(name, sorted(zones), n=1)
    raise ValueError(f"unknown time zone {name!r:.60}" + (f" (did you mean {close[0]}?)" if close else ""))


def phone_model(name) -> str:
    name = strict_str(name, "model")
    key = " ".join(name.lower().split())
    if key in _MODEL_KEYS:
        return _MODEL_KEYS[key]
    close = difflib.get_close_matches(name, PHONE_MODELS, n=1)
    raise ValueError(f"unknown phone model {name!r:.60}" + (f" (did you mean {close[0]}?)" if close else ""))


def did_you_mean(value: str, choices) -> str:
    close = difflib.get_close_matches(value, list(choices), n=1)
    return f" (did you mean {close[0]}?)" if close else ""


def each(values, check):
    """`check` on every item of a list; a bad item is named by its index (`targets.macs[1]`), not as the list.
    Anything but a list is returned as it is, for pydantic to refuse in its own words."""
    from soundpoint.yamlfile import FieldError

    if not isinstance(values, list):
        return values
    out = []
    for i, value in enumerate(values):
        try:
            out.append(check(value))
        except ValueError as exc:
            raise FieldError((i,), str(exc)) from None
    return out


# The phone selectors of both playbook kinds (experiment `phones:`, rollout `targets:`): MACs normalised
# before pydantic's strict check (an upper-case MAC is fine), model names checked after it.
MacList = Annotated[list[str], BeforeValidator(lambda v: each(v, mac))]
ModelList = Annotated[list[str], AfterValidator(lambda v: each(v, phone_model))]

# Single values as pydantic field types, so a model names the check in its field and needs no validator method.
PhoneModel = Annotated[str, AfterValidator(phone_model)]
Cron = Annotated[str, AfterValidator(cron)]
Timezone = Annotated[str, AfterValidator(timezone)]


def Host(what: str):  # noqa: N802 (used as a type: `address: validate.Host("phone address")`)
    """A host name or address field; an error calls it `what`."""
    return Annotated[str, AfterValidator(lambda v: host(v, what))]

# ----------------------------------------------------------------- phone parameters
_lookup = lru_cache(maxsize=4096)(polycom.lookup)   # the catalogue is a list of regexes; names repeat per phone


def param_types(v):
    """A pydantic `mode="before"` check for parameter mappings: text or integers only, said plainly.

    (pydantic's own message for `true` in a `str | int` field is "Input should be a valid string".)
    """
    from soundpoint.yamlfile import FieldError

    if isinstance(v, dict):
        for name, value in v.items():
            if isinstance(value, bool) or not isinstance(value, (str, int)):
                raise FieldError((name,), f"{name}: expected text or an integer, found {type(value).__name__}; quote it")
    return v


def placeholders(value: str) -> list[tuple[str, str]]:
    """The `{obj.attr}` references in a parameter value; anything else in braces is refused."""
    refs = []
    for m in _BRACE.finditer(value):
        obj, dot, attr = m.group(1).partition(".")
        if not dot or obj not in PLACEHOLDERS or attr not in PLACEHOLDERS[obj]:
            allowed = ", ".join(f"{{{o}.{a}}}" for o, attrs in PLACEHOLDERS.items() for a in attrs)
            raise ValueError(f"{m.group(0)!r:.60} is not a placeholder; allowed: {allowed}")
        refs.append((obj, attr))
    if _BRACE.sub("", value).count("{") or _BRACE.sub("", value).count("}"):
        raise ValueError("unbalanced '{' or '}' (only {site.gateway}-style placeholders may use braces)")
    return refs


def param(name, value, family: str | None = None, allow_placeholders: bool = False) -> str:
    """A phone parameter as the catalogue knows it; `secret:`/`env:` only where the catalogue marks a secret.

    family: a name from soundpoint.families (`uc-4.0`); an old or unknown name is refused with a hint.
    family None: checked against the newest family that knows the parameter; the phone's own family's
    ranges are checked again once the inventory is known.
    """
    if not isinstance(name, str):
        raise ValueError(f"parameter name {name!r:.40} must be text")
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise ValueError(f"{name}: expected text or an integer, found {type(value).__name__}; quote it")
    try:
        fam = families.get(family) if family is not None else None
    except families.FamilyError as exc:
        raise ValueError(str(exc)) from None
    p = _lookup(name) if fam is None else fam.lookup(name)
    if p is None:
        if fam is not None and _lookup(name) is not None:
            raise ValueError(f"{name}: not supported by firmware family {fam.name}")
        raise ValueError(f"{name}: not a parameter this tool manages (check the spelling)")
    # family None: the newest family that knows the name (its index ranges are the widest)
    fam = fam or next(f for f in reversed(families.FAMILIES.values()) if f.lookup(name) is not None)
    bad_index = fam.index_problem(name)
    if bad_index:
        raise ValueError(bad_index)
    text = str(value)
    no_control(text, name)
    if text.startswith(("secret:", "env:")):
        if not p.secret:
            from fleet.phoneconf.secrets import problem

            raise ValueError(problem(name, text))
        if not re.fullmatch(r"(secret|env):[A-Za-z0-9_.-]{1,128}", text):
            raise ValueError(f"{name}: a reference is secret:NAME or env:VAR (letters, digits, _ . -)")
        return text
    probe = text
    if "{" in text or "}" in text:
        if not allow_placeholders:
            raise ValueError(f"{name}: braces are not allowed here (placeholders only work in playbook parameters)")
        try:
            placeholders(text)
        except ValueError as exc:
            raise ValueError(f"{name}: {exc}") from None
        if _BRACE.fullmatch(text.strip()):
            return text      # the whole value comes from the inventory: checked per phone at plan time
        probe = _BRACE.sub("x", text)
    if p.kind == "int" and not (probe == "" and p.default is None) and not _INT.match(probe.strip()):
        raise ValueError(f"{name}={text!r:.40}: expected an integer (ASCII digits)")
    if p.kind == "str":
        return text          # free text: nothing more to check (and 50,000 phones' extensions load fast)
    try:
        fam.check(name, probe)
    except families.ParameterError as exc:
        raise ValueError(str(exc)) from None
    if p.kind == "host" and probe.strip():
        host(probe.strip(), name)
    return text
