"""`fleet config`: write a fleet.toml (`init`) and print the settings in force with where each comes from (`show`)."""
from __future__ import annotations

import json
import os
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table
from rich.text import Text

from fleet.cli.common import EXIT_INPUT, err, fail
from fleet.config import settings as settings_mod


@click.group("config")
def config_group() -> None:
    """fleet's settings: the Redis URL, the default inventory, the secrets file (fleet.toml)."""


@config_group.command("show")
@click.option("--json", "as_json", is_flag=True, help="One object: config_file, searched, and per key its value and source.")
@click.pass_context
def config_show(ctx: click.Context, as_json: bool) -> None:
    """Every setting in force and where it came from (a file and line, an environment variable, the default).
    A password in the Redis URL is never shown."""
    settings = settings_mod.load()        # again, not ctx.obj: a broken file is reported here (exit 2)
    if ctx.obj is not None and ctx.obj.insecure_secrets.source == "--insecure-secrets":
        settings = ctx.obj
    shown = settings.shown()
    if as_json:
        click.echo(json.dumps({"config_file": str(settings.config_file) if settings.config_file else None,
                               "searched": [str(p) for p in settings.searched], "settings": shown}, indent=1))
        return
    console = Console()
    console.print(Text(f"config file: {settings.config_file}" if settings.config_file else
                       "config file: none found (looked for " + ", ".join(map(str, settings.searched)) + ")"))
    t = Table("setting", "value", "from")
    for key, v in shown.items():
        value = "(not set)" if v["value"] is None else str(v["value"]).lower() if isinstance(v["value"], bool) else str(v["value"])
        t.add_row(key, Text(value), Text(v["source"]))
    console.print(t)
    if not settings.redis_url.value:
        err.print(Text("no Redis URL: commands that need shared state (experiment run, rollout run, status, worker, "
                       "collector, ...) will exit 3; `fleet config init --redis-url ...` sets one", style="yellow"), soft_wrap=True)


@config_group.command("init")
@click.option("--redis-url", help="The Redis every worker, collector and command shares (redis://fleet:PASSWORD@HOST:6379/0).")
@click.option("--inventory", "inventory", type=click.Path(dir_okay=False), help="The default inventory.")
@click.option("--secrets-file", type=click.Path(dir_okay=False),
              help="Replaces the secrets_file the inventory names (unset: the inventory's own).")
@click.option("--force", is_flag=True, help="Overwrite an existing ./fleet.toml.")
def config_init(redis_url: str | None, inventory: str | None, secrets_file: str | None, force: bool) -> None:
    """Write ./fleet.toml (mode 0600: the Redis URL may hold a password) with these values; refuses to overwrite
    an existing one without --force."""
    path = Path.cwd() / settings_mod.FILE_NAME
    if path.exists() and not force:
        fail(f"{path} exists: pass --force to overwrite it (`fleet config show` prints what it holds)", EXIT_INPUT)
    if redis_url and (why := settings_mod.check_redis_url(redis_url)):
        fail(f"invalid input: --redis-url: {why}", EXIT_INPUT)
    for option, value in (("--inventory", inventory), ("--secrets-file", secrets_file)):
        if value is not None and not value.strip():
            fail(f"invalid input: {option}: must not be empty", EXIT_INPUT)
    text = settings_mod.render(redis_url, inventory, secrets_file)
    # written under a temporary name with its mode set before it holds anything, then moved into place
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(text)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)
    settings_mod.read_file(path)      # what was written reads back (a value TOML cannot hold would show here)
    click.echo(f"wrote {path}")
    for option, value in (("--inventory", inventory), ("--secrets-file", secrets_file)):
        if value and not (path.parent / value).is_file():
            err.print(Text(f"note: {option} {value} does not exist yet", style="yellow"), soft_wrap=True)
    if not redis_url:
        err.print(Text("note: no --redis-url: set redis_url in it (or FLEET_REDIS_URL) before running workers", style="yellow"), soft_wrap=True)
