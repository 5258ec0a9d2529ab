"""Checks for the values only the controller's input files have: cron, time zones, phone models, and phone
parameters with fleet's own syntax in them (`secret:`/`env:` references, `{site.gateway}` placeholders).

The single-value checks the lab's files share (addresses, host:port, MACs, text) are soundpoint.values, and the
parameter catalogue's own check is soundpoint.catalogue: inventories, playbooks and lab files refuse the same
things with the same words. Each check returns the normalised value or raises ValueError with a message meant
for the person who wrote the file.
"""
from __future__ import annotations

import difflib
import re
from functools import lru_cache
from typing import Annotated

from pydantic import AfterValidator, BeforeValidator

from soundpoint import catalogue, values

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
    expr = values.strict_str(expr, "cron")
    fields = expr.split()
    if len(fields) != 5:
        raise ValueError(f"cron {expr!r:.60} needs 5 fields (minute hour day-of-month month day-of-week), has {len(fields)}")
    selected = [_cron_field(text, what, lo, hi, names) for text, (what, lo, hi, names) in zip(fields, _CRON_FIELDS)]
    days, months = selected[2], selected[3]
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
    name = values.strict_str(name, "time zone")
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
    name = values.strict_str(name, "model")
    key = " ".join(name.lower().split())
    if key in _MODEL_KEYS:
        return _MODEL_KEYS[key]
    close = difflib.get_close_matches(name, PHONE_MODELS, n=1)
    raise ValueError(f"unknown phone model {name!r:.60}" + (f" (did you mean {close[0]}?)" if close else ""))


# The phone selectors of both playbook kinds (experiment `phones:`, rollout `targets:`): MACs normalised
# before pydantic's strict check (an upper-case MAC is fine), model names checked after it.
MacList = Annotated[list[str], BeforeValidator(lambda v: values.each(v, values.mac))]
ModelList = Annotated[list[str], AfterValidator(lambda v: values.each(v, phone_model))]

# Single values as pydantic field types, so a model names the check in its field and needs no validator method.
PhoneModel = Annotated[str, AfterValidator(phone_model)]
Cron = Annotated[str, AfterValidator(cron)]
Timezone = Annotated[str, AfterValidator(timezone)]


# ----------------------------------------------------------------- phone parameters

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
    """A phone parameter as the catalogue knows it (soundpoint.catalogue.param, `secret:`/`env:` only where the
    catalogue marks a secret), with `{site.gateway}`-style placeholders where `allow_placeholders` (playbook
    parameters).

    family: a name from soundpoint.families (`uc-4.0`); an old or unknown name is refused with a hint.
    family None: checked against the newest family that knows the parameter; the phone's own family's
    ranges are checked again once the inventory is known.
    """
    if not allow_placeholders:
        return catalogue.param(name, value, family)
    known = catalogue.entry(name, value, family)
    text = known.text
    if catalogue.is_reference(text):
        return catalogue.reference(known)
    probe = text
    if "{" in text or "}" in text:
        try:
            placeholders(text)
        except ValueError as exc:
            raise ValueError(f"{name}: {exc}") from None
        if _BRACE.fullmatch(text.strip()):
            return text      # the whole value comes from the inventory: checked per phone at plan time
        probe = _BRACE.sub("x", text)
    catalogue.value_fits(known, probe)
    return text
