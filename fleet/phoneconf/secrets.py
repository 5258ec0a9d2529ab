"""Which parameter values may be secrets, and how they travel: by reference, masked everywhere but the renderer.

A value `secret:NAME` (the secrets file) or `env:VAR` (the worker's
environment) is allowed only in a parameter the catalogue marks secret
(`reg.x.auth.password` and the like); anywhere else it could publish the
router password or the Redis URL to a boot server and a phone's screen. A
secret parameter, in turn, takes only a reference (or nothing), so no secret
value is ever written into an inventory, a playbook, a plan or Redis.

Plans carry secret parameters masked as `***` (what a dry run prints and the
store keeps) plus the bare references, which the worker resolves and checks
again: a plan read from Redis cannot make it resolve a secret into a
non-secret parameter.
"""
from __future__ import annotations

from typing import Callable, Mapping

from soundpoint import catalogue

MASK = "***"
REF_PREFIXES = catalogue.REF_PREFIXES


class SecretPlacementError(ValueError):
    """A secret reference where no secret belongs, or a literal secret; the message names the parameter only."""


def is_ref(value: object) -> bool:
    return isinstance(value, str) and value.startswith(REF_PREFIXES)


def is_secret(name: str) -> bool:
    p = catalogue.lookup(name)
    return p is not None and p.secret


def problem(name: str, value: object) -> str | None:
    """Why `name: value` may not be written in an inventory or playbook, or None."""
    if is_ref(value) and not is_secret(name):
        return catalogue.misplaced_reference(name)
    if is_secret(name) and not is_ref(value) and str(value) != "":
        return (f"{name}: a secret parameter takes a reference (secret:NAME from the secrets file or env:VAR), "
                f"never the value itself")
    return None


def check(params: Mapping[str, object]) -> None:
    """Raise SecretPlacementError for the first misplaced secret among `params` (a pydantic validator calls it)."""
    for name, value in params.items():
        why = problem(name, value)
        if why:
            raise SecretPlacementError(why)


def validate_field(params: Mapping[str, object]) -> None:
    """For a pydantic validator of a `params` field: the error's location ends at the parameter itself,
    so a file error names the line of the offending parameter, not of the `params:` block."""
    from pydantic import ValidationError
    from pydantic_core import InitErrorDetails, PydanticCustomError

    for name, value in params.items():
        why = problem(name, value)
        if why:
            error = PydanticCustomError("secret_placement", why.split(": ", 1)[1])
            raise ValidationError.from_exception_data("params", [InitErrorDetails(type=error, loc=(name,), input="***")])


def mask(name: str, value: str | None) -> str | None:
    """The value as shown anywhere outside the renderer: `***` for a non-empty secret parameter."""
    if value is None or value == "" or not is_secret(name):
        return value
    return MASK


def split(params: Mapping[str, str]) -> tuple[dict[str, str], dict[str, str]]:
    """(parameters with secrets masked, {secret parameter: its reference})."""
    masked = {k: mask(k, v) or "" for k, v in params.items()}
    refs = {k: v for k, v in params.items() if is_secret(k) and is_ref(v)}
    return masked, refs


def resolve(masked: Mapping[str, str], refs: Mapping[str, str], resolve_one: Callable[[str, str], str]) -> dict[str, str]:
    """The parameters to render: `masked` with each secret put back from its reference.

    Everything is re-checked here, in the worker, because both mappings may
    come from Redis: a reference outside a secret parameter, a secret
    parameter without its reference, or a reference that is not one is refused.
    """
    out = {}
    for name, value in masked.items():
        if is_ref(value):
            if not is_secret(name):
                raise SecretPlacementError(f"{name}: refusing to resolve a secret reference into a non-secret parameter")
            value = resolve_one(name, value)   # a plan stored before references travelled apart
        out[name] = value
    for name, ref in refs.items():
        if not is_secret(name):
            raise SecretPlacementError(f"{name}: refusing to resolve a secret reference into a non-secret parameter")
        if not is_ref(ref):
            raise SecretPlacementError(f"{name}: the plan's secret reference is not secret:NAME or env:VAR")
        out[name] = resolve_one(name, ref)
    leftover = [n for n, v in out.items() if v == MASK and n not in refs]
    if leftover:
        raise SecretPlacementError(f"{leftover[0]}: masked in the plan but no reference to resolve it from")
    return out
