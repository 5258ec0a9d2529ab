"""What every `fleet` command shares: the exit code table, one-line errors, the store, the inventory."""
from __future__ import annotations

import os
import sys
from typing import NoReturn

from rich.console import Console
from rich.text import Text

from soundpoint.cli_exit import ExitCodeGroup, one_line
from soundpoint.redact import redact
from soundpoint.yamlfile import FileError

EXIT_OK, EXIT_FAILED, EXIT_INPUT, EXIT_INFRA, EXIT_INTERNAL, EXIT_INTERRUPTED = 0, 1, 2, 3, 4, 130
err = Console(stderr=True)


def fail(message: str, code: int) -> None:
    """Print one line on stderr (user text stays text: a `[/x]` in a value is not markup) and exit."""
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


def open_store(creates_state: bool = False):
    """The Store on FLEET_REDIS_URL. Without it, a command that reads existing state exits 3 saying there is none;
    one that creates state (`creates_state`) runs on a private redis-server stopped when the command ends."""
    from soundpoint.redisboot import NoFleetState, RedisUnavailable, existing_redis_url, private_redis_url
    from fleet.state.store import Store

    try:
        store = Store(private_redis_url() if creates_state else existing_redis_url())
        store.ping()
        return store
    except (RedisUnavailable, NoFleetState) as exc:
        fail(brief(exc), EXIT_INFRA)
    except Exception as exc:  # redis.ConnectionError and friends
        from soundpoint.redact import redact_url

        fail(brief(f"cannot reach Redis at {redact_url(os.environ.get('FLEET_REDIS_URL'))}: {type(exc).__name__}"), EXIT_INFRA)


def load_inventory(path: str):
    """The inventory, validated, with its secrets file checked (shape, and every secret it names present)."""
    from fleet.config import inventory

    try:
        inv = inventory.load(path, keep_source=True)
        inventory.check_secrets(inv)
        return inv
    except FileError as exc:
        fail(f"invalid inventory: {exc}", EXIT_INPUT)


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
    while the interpreter is shutting down and print noise after an interrupted run. A private Redis this run
    started is stopped first (os._exit skips atexit)."""
    from soundpoint.redisboot import stop_private

    stop_private()
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
