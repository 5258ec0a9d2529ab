"""Which phones a site has, and which servers each is configured with, written to the store.

The configured servers follow what a rollout last pushed to the phone, else
the inventory's parameters; reading them out of the parameters is
`predict.configured_servers`. Kept out of the store so that the store only
stores.
"""
from __future__ import annotations

from fleet.config.inventory import Inventory, Site
from fleet.phoneconf.predict import configured_servers
from fleet.state.store import RolloutStore, Store


def register_site(store: Store, inv: Inventory, site: Site) -> None:
    """Register the site's phones (an experiment and a collector do this before they observe it)."""
    pushed = RolloutStore(store).last_pushed([p.mac for p in site.phones])
    store.register_phones(site.name, [{"mac": p.mac, "model": p.model, "address": p.address,
                                       "firmware_version": p.firmware_version,
                                       "servers": configured_servers(pushed.get(p.mac) or inv.effective_params(site, p))}
                                      for p in site.phones])
