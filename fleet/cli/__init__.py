"""`fleet`: roll configuration out to SoundPoint phones, run WAN-outage experiments, see which phone is registered where.

Settings (Redis URL, default inventory, secrets file) come from ./fleet.toml, else
~/.config/fleet/fleet.toml (`fleet config init` writes one, `fleet config show`
prints what is in force); FLEET_REDIS_URL, FLEET_INVENTORY and FLEET_SECRETS_FILE
override them.

Exit codes: 0 success / every expectation held; 1 an expectation failed or a
rollout failed or halted; 2 bad input (playbook, inventory, lab, secrets or
settings file, parameters, command line; a secrets file others can read; a
rollout whose files differ from the site's workers'): nothing was touched, the
message names file, line and field; 3 infrastructure unreachable or a runtime
error (Redis, workers, lease held), or no Redis URL configured; 4 internal error
(a bug: one line, FLEET_DEBUG=1 shows the traceback); 130 interrupted.
"""
from __future__ import annotations

import dataclasses

import click

from soundpoint.yamlfile import FileError

from fleet.cli.common import FleetCli
from fleet.cli.config import config_group
from fleet.cli.experiment import experiment
from fleet.cli.incident import incident
from fleet.cli.record import record_cmd
from fleet.cli.inventory import inventory_group
from fleet.cli.rollout import rollout
from fleet.cli.services import collector, scheduler, worker
from fleet.cli.status import status
from fleet.config import settings as settings_mod

INVENTORY_PARAM = "inventory_path"


def inventory_defaults(group: click.Group, inventory: str) -> dict:
    """A click default_map giving every `--inventory` option (and `inventory check`'s FILE), at any depth, the
    configured inventory (the environment variable FLEET_INVENTORY, read by click before the default_map, still
    wins over fleet.toml's; both come in `settings.inventory`)."""
    out: dict = {}
    for name, cmd in group.commands.items():
        if isinstance(cmd, click.Group):
            sub = inventory_defaults(cmd, inventory)
            if sub:
                out[name] = sub
        elif any(p.name == INVENTORY_PARAM for p in cmd.params):      # `--inventory`, or `inventory check [FILE]`
            out[name] = {INVENTORY_PARAM: inventory}
    return out


@click.group(help=__doc__, cls=FleetCli)
@click.version_option(package_name="soundpoint-fleet", prog_name="fleet", message="%(prog)s %(version)s")
@click.option("--insecure-secrets", is_flag=True,
              help="Accept a secrets file that its group or others can read (refused otherwise, as ssh refuses keys).")
@click.pass_context
def main(ctx: click.Context, insecure_secrets: bool) -> None:
    try:
        settings = settings_mod.load()
    except FileError:
        if ctx.invoked_subcommand != "config":
            raise
        # `fleet config init --force` must be able to replace a broken file; `config show` reads it again and says why
        settings = settings_mod.Settings()
    if insecure_secrets:
        settings = dataclasses.replace(settings, insecure_secrets=settings_mod.Setting(True, "--insecure-secrets"))
    ctx.obj = settings
    settings_mod.export_secrets_file(settings)
    if settings.inventory.value:
        ctx.default_map = inventory_defaults(main, settings.inventory.value)


for command in (experiment, incident, record_cmd, rollout, inventory_group, status, scheduler, collector, worker, config_group):
    main.add_command(command)
