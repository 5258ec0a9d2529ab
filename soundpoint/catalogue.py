"""A phone parameter as the catalogue knows it: which entry a name is, and whether a value fits.

The catalogue itself is data in soundpoint.families (one module per firmware
family). This module answers the questions every reader of an input file asks
of it, the controller's inventories and playbooks as much as the lab's lab
files: is this a parameter, does this family have it, is the value one the
phone accepts, and may it be a `secret:`/`env:` reference (only where the
catalogue marks a secret: a password never stands in a file, and a reference
anywhere else could publish a secret to a phone's screen). The controller's
`{site.gateway}` placeholders are fleet's own: fleet.config.validate handles
them between `entry` and `value_fits`; everywhere else braces are refused.
"""
from __future__ import annotations

import re
from functools import lru_cache
from typing import NamedTuple

from soundpoint import families
from soundpoint.values import host, no_control
from soundpoint.yamlfile import FieldError

_INT = re.compile(r"^-?[0-9]+$")          # ASCII only: `\d` would let full-width digits through
# A reference to a secret, never the secret: `secret:NAME` (the controller's secrets file) or `env:VAR` (its
# environment). Resolved only by the controller's renderer (fleet.phoneconf.secrets).
REF_PREFIXES = ("secret:", "env:")
_REFERENCE = re.compile(r"(secret|env):[A-Za-z0-9_.-]{1,128}")


@lru_cache(maxsize=4096)   # the catalogue is a list of regexes; names repeat per phone
def _lookup(name: str, known: tuple[str, ...]) -> families.Param | None:
    return families.lookup_any(name)


def lookup(name: str) -> families.Param | None:
    """The entry for `name` in any family (kind and secrecy agree across families). Memoised per set of known
    families (`families.NAMES` changes when a family is registered or forgotten), so a plug-in family's entries
    are seen while it is registered and never after."""
    return _lookup(name, families.NAMES)


def check(name: str, value: str, family: str) -> str:
    """The value as a phone of `family` will read it, or ParameterError naming the parameter."""
    try:
        fam = families.get(family)
    except families.FamilyError as exc:
        raise families.ParameterError(f"{name}: {exc}") from None
    return fam.check(name, value)


def param_types(v):
    """A pydantic `mode="before"` check for parameter mappings: text or integers only, said plainly.

    (pydantic's own message for `true` in a `str | int` field is "Input should be a valid string".)
    """
    if isinstance(v, dict):
        for name, value in v.items():
            if isinstance(value, bool) or not isinstance(value, (str, int)):
                raise FieldError((name,), f"{name}: expected text or an integer, found {type(value).__name__}; quote it")
    return v


class Entry(NamedTuple):
    """A parameter from an input file that the catalogue knows: its entry, the family it is checked against, and
    its value as text (printable)."""
    name: str
    text: str
    param: families.Param
    family: families.Family


def entry(name, value, family: str | None = None) -> Entry:
    """The name's catalogue entry, with the value as text; ValueError when the name is no parameter, the family
    lacks it, an index is out of the family's range, or the value is no text or integer or holds control characters.

    family: a name from soundpoint.families (`uc-4.0`); an old or unknown name is refused with a hint.
    family None: checked against the newest family that knows the parameter (its index ranges are the widest).
    """
    if not isinstance(name, str):
        raise ValueError(f"parameter name {name!r:.40} must be text")
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise ValueError(f"{name}: expected text or an integer, found {type(value).__name__}; quote it")
    try:
        fam = families.get(family) if family is not None else None
    except families.FamilyError as exc:
        raise ValueError(str(exc)) from None
    p = lookup(name) if fam is None else fam.lookup(name)
    if p is None:
        if fam is not None and lookup(name) is not None:
            raise ValueError(f"{name}: not supported by firmware family {fam.name}")
        raise ValueError(f"{name}: not a parameter this tool manages (check the spelling)")
    fam = fam or next(f for f in reversed(families.FAMILIES.values()) if f.lookup(name) is not None)
    bad_index = fam.index_problem(name)
    if bad_index:
        raise ValueError(bad_index)
    text = str(value)
    no_control(text, name)
    return Entry(name, text, p, fam)


def is_reference(value: object) -> bool:
    return isinstance(value, str) and value.startswith(REF_PREFIXES)


def misplaced_reference(name: str) -> str:
    """The words for a reference in a parameter the catalogue does not mark secret."""
    return (f"{name}: secret:/env: references are allowed only in secret parameters "
            f"(such as reg.x.auth.password), not here")


def reference(e: Entry) -> str:
    """A `secret:`/`env:` value: only in a secret parameter, and only as secret:NAME or env:VAR."""
    if not e.param.secret:
        raise ValueError(misplaced_reference(e.name))
    if not _REFERENCE.fullmatch(e.text):
        raise ValueError(f"{e.name}: a reference is secret:NAME or env:VAR (letters, digits, _ . -)")
    return e.text


def value_fits(e: Entry, probe: str | None = None) -> None:
    """ValueError unless the value is one a phone of the entry's family accepts: an integer in range, one of the
    choices, a host name. `probe` is the text checked in place of the value (the caller's placeholders replaced);
    the message still quotes the value as written."""
    probe = e.text if probe is None else probe
    p = e.param
    if p.kind == "int" and not (probe == "" and p.default is None) and not _INT.match(probe.strip()):
        raise ValueError(f"{e.name}={e.text!r:.40}: expected an integer (ASCII digits)")
    if p.kind == "str":
        return               # free text: nothing more to check (and 50,000 phones' extensions load fast)
    try:
        e.family.check(e.name, probe)
    except families.ParameterError as exc:
        raise ValueError(str(exc)) from None
    if p.kind == "host" and probe.strip():
        host(probe.strip(), e.name)


def param(name, value, family: str | None = None) -> str:
    """The value as written, once the catalogue knows the name and the family accepts the value, or it is a
    reference in a secret parameter (ValueError naming the parameter otherwise). Braces are refused: only
    playbook parameters have placeholders (fleet.config.validate.param with allow_placeholders)."""
    e = entry(name, value, family)
    if is_reference(e.text):
        return reference(e)
    if "{" in e.text or "}" in e.text:
        raise ValueError(f"{name}: braces are not allowed here (placeholders only work in playbook parameters)")
    value_fits(e)
    return e.text
