"""Checks for single values in input files: text, MAC addresses, host names, addresses and ports.

The controller's inventories and playbooks and the lab's lab files refuse the
same things with the same words, so the checks live here, below both. Each
check returns the normalised value or raises ValueError with a message meant
for the person who wrote the file. What only the controller's files have
(cron, time zones, placeholders, secret references) stays in fleet.config.validate.
"""
from __future__ import annotations

import difflib
import ipaddress
import math
import re
from typing import Annotated, Callable

from soundpoint.fileerror import FieldError

MAC_RE = re.compile(r"^[0-9a-f]{12}$")
_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")
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
    """12 hex digits, lower case; `:` and `-` separators and upper case are accepted (phones print both)."""
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


def did_you_mean(value: str, choices) -> str:
    """` (did you mean X?)` for the closest of `choices`, or "" when none is close: appended to an error."""
    close = difflib.get_close_matches(value, list(choices), n=1)
    return f" (did you mean {close[0]}?)" if close else ""


def plural(n: int, word: str, many: str | None = None) -> str:
    """`1 site`, `2 sites`, `0 phones`: a count with its noun as people write it (`many` for an irregular plural)."""
    return f"{n} {word if n == 1 else (many or word + 's')}"


def each(items, check: Callable[[object], object]):
    """`check` on every item of a list; a bad item is named by its index (`targets.macs[1]`), not as the list.
    Anything but a list is returned as it is, for pydantic to refuse in its own words."""
    if not isinstance(items, list):
        return items
    out = []
    for i, value in enumerate(items):
        try:
            out.append(check(value))
        except ValueError as exc:
            raise FieldError((i,), str(exc)) from None
    return out


def Host(what: str):  # noqa: N802 (used as a type: `address: values.Host("phone address")`)
    """A host name or address field; an error calls it `what`."""
    from pydantic import AfterValidator  # in-function: fleet.toml's reader and `fleet status` start without pydantic

    return Annotated[str, AfterValidator(lambda v: host(v, what))]
