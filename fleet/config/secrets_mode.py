"""A secrets file others can read is refused, as ssh refuses a private key that others can read.

The secrets file holds every phone's admin password, the routers' SSH logins
and the boot server's write password; a copy left 0644 on a shared host gives
them to every local user. Only the owner may have any access (ssh's rule for
keys: no bit of group or others set); `--insecure-secrets` (or
`insecure_secrets = true` in fleet.toml) accepts such a file knowingly.
"""
from __future__ import annotations

import stat
from pathlib import Path


def insecure(path: str | Path) -> str | None:
    """Why `path` is too open to hold secrets, with the fix; None when only its owner has access (or it does not
    exist: that is reported where the file is read, with the inventory line naming it)."""
    try:
        mode = stat.S_IMODE(Path(path).stat().st_mode)
    except OSError:
        return None
    if not mode & 0o077:
        return None
    who = [w for w, bits in (("its group", 0o070), ("others", 0o007)) if mode & bits]
    can = "readable" if mode & 0o044 else "accessible"
    return (f"secrets file {path} is {can} by {' and '.join(who)} (mode {mode:04o}): chmod 600 {path}, "
            "or pass --insecure-secrets")
