"""The Polycom parameters we manage, and the provisioning files they are rendered into.

Pure functions, no I/O. Facts come from shared/reference/polycom.md; where the
reference marks something uncertain it says so beside the entry. The first
occurrence of a parameter wins on the phone, so the per-phone file is listed
before the site file in CONFIG_FILES.
"""
from __future__ import annotations

import re
from xml.sax.saxutils import quoteattr

from soundpoint import families

# The parameter catalogue lives in the firmware profiles (soundpoint.families, one module per family);
# these names are kept for the callers that ask "any family" or name a family by its string.
ParameterError = families.ParameterError
Param = families.Param
EXPIRES_MIN = {name: fam.expires_min for name, fam in families.FAMILIES.items()}
FAILBACK_FAMILIES = frozenset(name for name, fam in families.FAMILIES.items() if fam.failover_controls)


def _union_catalogue() -> list[tuple[re.Pattern, Param]]:
    """Every entry of every family once (by name), as (regex, entry): for listings and examples."""
    seen: dict[str, Param] = {}
    for fam in reversed(families.FAMILIES.values()):
        for p in fam.catalogue:
            seen.setdefault(p.name, p)
    return [(p.regex, p) for p in seen.values()]


CATALOGUE: list[tuple[re.Pattern, Param]] = _union_catalogue()


def lookup(name: str) -> Param | None:
    """The entry for `name` in any family (kind and secrecy agree across families)."""
    return families.lookup_any(name)


def check(name: str, value: str, family: str) -> str:
    """The value as a phone of `family` will read it, or ParameterError naming the parameter."""
    try:
        fam = families.get(family)
    except families.FamilyError as exc:
        raise ParameterError(f"{name}: {exc}") from None
    return fam.check(name, value)


def render_master(mac: str, config_files: list[str], app_file: str = "sip.ld") -> str:
    listed = ", ".join(config_files)
    if len(listed) > 2047:
        raise ParameterError("CONFIG_FILES longer than 2047 characters")
    return (f'<?xml version="1.0" standalone="yes"?>\n<APPLICATION APP_FILE_PATH={quoteattr(app_file)} '
            f'CONFIG_FILES={quoteattr(listed)} MISC_FILES="" LOG_FILE_DIRECTORY="" OVERRIDES_DIRECTORY=""/>\n')


def render_config(params: dict[str, str]) -> str:
    """One XML file; elements group parameters by their first name component, as Polycom's templates do."""
    groups: dict[str, list[tuple[str, str]]] = {}
    for k in sorted(params):
        groups.setdefault(k.split(".")[0], []).append((k, params[k]))
    body = []
    for group, items in groups.items():
        attrs = "\n    ".join(f"{k}={quoteattr(v)}" for k, v in items)
        body.append(f"  <{group}\n    {attrs}/>")
    return '<?xml version="1.0" standalone="yes"?>\n<polycomConfig>\n' + "\n".join(body) + "\n</polycomConfig>\n"


def render_phone_files(mac: str, params: dict[str, str]) -> dict[str, bytes]:
    """All files of one phone: `<MAC>.cfg` and `<MAC>-fleet.cfg` (everything in one per-phone file)."""
    name = f"{mac}-fleet.cfg"
    return {f"{mac}.cfg": render_master(mac, [name]).encode(), name: render_config(params).encode()}
