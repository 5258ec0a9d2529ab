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
import importlib

import click

from soundpoint.fileerror import FileError

from fleet.cli.common import FleetCli
from fleet.config import settings as settings_mod

# Every subcommand, by name: its module is imported only when it runs (or `fleet --help` lists it), so that
# `fleet status` does not pay for Celery, pydantic and the rollout machinery it never uses. A new command is one
# line here.
COMMANDS = {
    "collector": "fleet.cli.services:collector",
    "config": "fleet.cli.config:config_group",
    "experiment": "fleet.cli.experiment:experiment",
    "incident": "fleet.cli.incident:incident",
    "inventory": "fleet.cli.inventory:inventory_group",
    "record": "fleet.cli.record:record_cmd",
    "rollout": "fleet.cli.rollout:rollout",
    "scheduler": "fleet.cli.services:scheduler",
    "status": "fleet.cli.status:status",
    "worker": "fleet.cli.services:worker",
}


class LazyFleetCli(FleetCli):
    """`fleet`'s group: the commands of COMMANDS, each loaded the first time it is asked for."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(COMMANDS))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        found = super().get_command(ctx, cmd_name)
        if found is None and cmd_name in COMMANDS:
            module, _, attr = COMMANDS[cmd_name].partition(":")
            found = getattr(importlib.import_module(module), attr)
            self.add_command(found, cmd_name)
        return found


INVENTORY_PARAM = "inventory_path"


def inventory_defaults(ctx: click.Context, group: click.Group, inventory: str, only: str | None = None) -> dict:
    """A click default_map giving every `--inventory` option (and `inventory check`'s FILE), at any depth, the
    configured inventory (the environment variable FLEET_INVENTORY, read by click before the default_map, still
    wins over fleet.toml's; both come in `settings.inventory`). `only`: that subcommand's part alone (the one
    being run: the others are not even imported)."""
    out: dict = {}
    for name in [only] if only else group.list_commands(ctx):
        cmd = group.get_command(ctx, name)
        if isinstance(cmd, click.Group):
            sub = inventory_defaults(ctx, cmd, inventory)
            if sub:
                out[name] = sub
        elif cmd is not None and any(p.name == INVENTORY_PARAM for p in cmd.params):  # `--inventory`, `inventory check [FILE]`
            out[name] = {INVENTORY_PARAM: inventory}
    return out


@click.group(help=__doc__, cls=LazyFleetCli)
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
    if settings.inventory.value and ctx.invoked_subcommand:
        ctx.default_map = inventory_defaults(ctx, main, settings.inventory.value, ctx.invoked_subcommand)

