"""What every `fleet` command shares: the exit code table, one-line errors, the store, the inventory."""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import NoReturn

import click

from soundpoint.cli_exit import ExitCodeGroup, one_line
from soundpoint.redact import redact
from soundpoint.fileerror import FileError

from fleet.config import settings as settings_mod

EXIT_OK, EXIT_FAILED, EXIT_INPUT, EXIT_INFRA, EXIT_INTERNAL, EXIT_INTERRUPTED = 0, 1, 2, 3, 4, 130


class _Stderr:
    """rich's Console on stderr, made on first use: a command that prints no message (`fleet status --json`)
    starts without importing rich."""

    def __init__(self) -> None:
        self._console = None

    def print(self, *objects, **kwargs) -> None:
        if self._console is None:
            from rich.console import Console

            self._console = Console(stderr=True)
        self._console.print(*objects, **kwargs)


err = _Stderr()


def fail(message: str, code: int) -> None:
    """Print one line on stderr (user text stays text: a `[/x]` in a value is not markup) and exit."""
    from rich.text import Text

    err.print(Text(message, style="red"), soft_wrap=True)   # one line, never wrapped: grep finds it
    sys.exit(code)


def brief(exc: BaseException | str) -> str:
    """One line, credentials out first (a cut at the length limit must not fall inside a URL's password)."""
    return one_line(redact(str(exc)), limit=300)


def is_infra(exc: BaseException) -> bool:
    """Redis, Celery or the network gave out: not a bug, not bad input."""
    mod = type(exc).__module__.split(".")[0]
    return isinstance(exc, (OSError, TimeoutError)) or (mod in ("redis", "kombu", "celery", "amqp")
                                                        and "rror" in type(exc).__name__)


class FleetCli(ExitCodeGroup):
    """Maps every way a command can end onto the exit code table above; never a traceback for the user."""

    debug_env = "FLEET_DEBUG"

    def bad_input(self, exc: FileError) -> NoReturn:
        fail(f"invalid input: {exc}", EXIT_INPUT)

    def unexpected(self, exc: Exception) -> NoReturn:
        if is_infra(exc):
            fail(f"runtime error: {type(exc).__name__}: {brief(exc)}", EXIT_INFRA)
        fail(f"internal error: {type(exc).__name__}: {brief(exc)} (FLEET_DEBUG=1 shows the traceback)",
              EXIT_INTERNAL)


NO_REDIS_URL = ("no Redis URL: run `fleet config init --redis-url redis://fleet:PASSWORD@HOST:6379/0` "
                "or set FLEET_REDIS_URL (the Redis your workers and collectors use)")


def settings():
    """The settings in force for this command (fleet.toml and the environment), read once by the `fleet` group."""
    ctx = click.get_current_context(silent=True)
    found = ctx.find_object(settings_mod.Settings) if ctx else None
    return found if found is not None else settings_mod.load()


def open_store():
    """The Store on the configured Redis (fleet.toml's `redis_url`, or FLEET_REDIS_URL over it). Without one there
    is no shared state to read or write: the command says how to configure it and exits 3. The URL is also put in
    this process's environment, for whatever it starts (a worker's pool, Celery's configuration)."""
    from fleet.state.store import Store
    from soundpoint.redact import redact_url

    setting = settings().redis_url
    if not setting.value:
        fail(NO_REDIS_URL, EXIT_INFRA)
    os.environ["FLEET_REDIS_URL"] = setting.value
    try:
        store = Store(setting.value)
        store.ping()
        return store
    except Exception as exc:  # redis.ConnectionError and friends
        fail(brief(f"cannot reach Redis at {redact_url(setting.value)} ({setting.source}): {type(exc).__name__}"),
             EXIT_INFRA)


def optional_store():
    """The Store on the configured Redis, or None when none is configured (a dry run, a probe: they work without)."""
    from fleet.state.store import Store

    url = settings().redis_url.value
    return Store(url) if url else None


def load_inventory(path: str):
    """The inventory, validated, with its secrets file checked (shape, every secret it names present, and readable
    by its owner alone unless --insecure-secrets)."""
    from fleet.config import inventory

    try:
        inv = inventory.load(path, keep_source=True)
        check_secrets_file(inv)
        inventory.check_secrets(inv)
        return inv
    except FileError as exc:
        fail(f"invalid inventory: {exc}", EXIT_INPUT)


def check_secrets_file(inv) -> None:
    """The secrets file in force for `inv` (fleet.toml's or FLEET_SECRETS_FILE's, else the inventory's) exists
    when the settings name it, and only its owner can read it unless --insecure-secrets: else exit 2."""
    from fleet.config import inventory, secrets_mode

    given = settings().secrets_file
    if given.value and not Path(given.value).is_file():
        fail(f"invalid input: {given.source}: secrets_file: {given.value} not found", EXIT_INPUT)
    path = inventory.secrets_path(inv)
    if path is not None and not settings().insecure_secrets.value:
        problem = secrets_mode.insecure(path)
        if problem:
            fail(problem, EXIT_INPUT)


def check_worker_files(store, inv, sites, refuse: bool = False, force: bool = False) -> None:
    """Compare this command's inventory and secrets file (content hashes) with those the sites' workers announced
    (fleet.worker.files_beacon). A difference is a warning naming the file and the worker; with `refuse` (rollouts)
    it stops the command with exit 2 unless `force`."""
    from fleet.config import fingerprint
    from fleet.worker.files_beacon import TTL_S

    mine = fingerprint.of(inv)
    problems = []
    for site in sorted(set(sites)):
        for worker, info in sorted(store.worker_files(site, TTL_S).items()):
            theirs = fingerprint.FilesDigest(*(str(info.get(k, "")) for k in
                                               ("inventory_path", "inventory_sha256", "secrets_path", "secrets_sha256")))
            for what in mine.differs(theirs):
                own, other = ((mine.inventory_path, theirs.inventory_path) if what == "inventory"
                              else (mine.secrets_path or "(none)", theirs.secrets_path or "(none)"))
                problems.append(f"site {site}: worker {info.get('node') or worker} (host {info.get('host', '?')}, "
                                f"pid {info.get('pid', '?')}) runs with a different {what}: {other}, "
                                f"this command with {own}")
    if not problems:
        return
    from rich.text import Text

    for p in problems:
        err.print(Text(f"warning: {p}", style="yellow"), soft_wrap=True)
    if refuse and not force:
        fail("refusing to roll out with other files than the site's workers use: restart them on these files, "
             "or pass --force", EXIT_INPUT)


def load_checked(load, check_against, playbook_path: str, inventory_path: str):
    """A playbook (`load`), the inventory, and the playbook checked against it (`check_against`): the experiment
    and the rollout playbooks load the same way, and any error exits 2 before anything is touched."""
    try:
        pb = load(playbook_path)
    except FileError as exc:
        fail(f"invalid playbook: {exc}", EXIT_INPUT)
    inv = load_inventory(inventory_path)
    try:
        check_against(pb, inv, playbook_path)
    except FileError as exc:
        fail(f"invalid playbook: {exc}", EXIT_INPUT)
    return pb, inv


def check_sites(inv, sites) -> None:
    """Every --site must be in the inventory: a typo stops here, not in a worker's first task."""
    for s in sites:
        try:
            inv.site(s)
        except KeyError as exc:
            fail(str(exc.args[0]), EXIT_INPUT)


def exit_now(code: int) -> None:
    """Exit without interpreter teardown: Celery's result objects otherwise try to unsubscribe from Redis
    while the interpreter is shutting down and print noise after an interrupted run."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


class nothing:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


def seconds(v) -> str:
    return "-" if v is None else f"{v:.2f}"
