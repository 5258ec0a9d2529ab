"""The inventory and secrets a test session reads, checked as every fleet command checks them, into a FleetSite.

Bad input is one message naming the file (and line and field, from the inventory's own loader), never a
traceback in the middle of a user's test run: the plugin turns SessionError into a failure without one.
"""
from __future__ import annotations

from fleet.config import inventory as inv_mod
from fleet.config.secrets_mode import insecure
from fleet.testing.site import FleetSite
from soundpoint.yamlfile import FileError


class SessionError(ValueError):
    """The session cannot start: the message names the file, option or site."""


def open_site(inventory_path: str, site_name: str | None, insecure_secrets: bool = False) -> FleetSite:
    """The site `site_name` of the inventory (its only site when None), with its secrets file read."""
    try:
        inventory = inv_mod.load(inventory_path, keep_source=True)
    except FileError as exc:
        raise SessionError(str(exc)) from None
    except OSError as exc:
        raise SessionError(f"--fleet-inventory {inventory_path}: {exc.strerror or exc}") from None
    path = inv_mod.secrets_path(inventory)
    if path is not None and not insecure_secrets and (why := insecure(path)):
        raise SessionError(why.replace("--insecure-secrets", "--fleet-insecure-secrets"))
    try:
        secrets = inv_mod.check_secrets(inventory)
    except FileError as exc:
        raise SessionError(str(exc)) from None
    except OSError as exc:
        raise SessionError(f"secrets file {path}: {exc.strerror or exc}") from None
    if site_name is None:
        if len(inventory.sites) != 1:
            raise SessionError(f"{inventory_path} has {len(inventory.sites)} sites "
                               f"({', '.join(s.name for s in inventory.sites)}): choose one with --fleet-site")
        site_name = inventory.sites[0].name
    try:
        return FleetSite(inventory, secrets, site_name)
    except ValueError as exc:
        raise SessionError(str(exc)) from None
