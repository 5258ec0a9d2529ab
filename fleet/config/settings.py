"""fleet's own settings: which Redis, which inventory, which secrets file; from `fleet.toml` and the environment.

An operator should not have to export variables by hand before every command
(and a worker and a CLI that read different shells end up on different
Redis servers). So the settings live in one file, as `ansible.cfg` does:

1. `./fleet.toml` in the working directory, else
2. `$XDG_CONFIG_HOME/fleet/fleet.toml` (default `~/.config/fleet/fleet.toml`);

only the first file found is read. Environment variables override single
values (`FLEET_REDIS_URL`, `FLEET_INVENTORY`, `FLEET_SECRETS_FILE`), and a
command-line option overrides both. Every value remembers where it came from
(`file:line`, the variable's name, or "default"), so `fleet config show` can
say why it is in force.

Paths in a file are relative to that file's directory (a user's config file
names the same inventory from any working directory); paths from the
environment are relative to the working directory.

`secrets_file`, when given, replaces the `secrets_file` the inventory names
(the same inventory, checked in, with each operator's own secrets); when not
given, the inventory's own is used. It reaches everything that loads the
inventory through `FLEET_SECRETS_FILE` (`export_secrets_file`), workers
included.

A bad file is bad input: a FileError naming file, line and key (the CLI exits 2).
"""
from __future__ import annotations

import json
import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Generic, TypeVar

from soundpoint import values
from soundpoint.redact import redact_url
from soundpoint.fileerror import FileError

FILE_NAME = "fleet.toml"
ENV_REDIS_URL, ENV_INVENTORY, ENV_SECRETS_FILE = "FLEET_REDIS_URL", "FLEET_INVENTORY", "FLEET_SECRETS_FILE"
REDIS_SCHEMES = ("redis://", "rediss://", "unix://")
DEFAULT = "default"

T = TypeVar("T")


@dataclass(frozen=True)
class Setting(Generic[T]):
    """One value in force and where it came from: `path:line`, an environment variable's name, or "default"."""
    value: T
    source: str = DEFAULT


@dataclass(frozen=True)
class Settings:
    """What a fleet command runs with. `config_file` is the file read (None: none found); `searched` the
    files looked for, in order."""
    redis_url: Setting[str | None] = Setting(None)
    inventory: Setting[str | None] = Setting(None)
    secrets_file: Setting[str | None] = Setting(None)
    insecure_secrets: Setting[bool] = Setting(False)
    config_file: Path | None = None
    searched: tuple[Path, ...] = field(default=())

    def shown(self) -> dict[str, dict]:
        """Every value with its source, for `fleet config show`: never a password (the Redis URL is redacted)."""
        out = {}
        for key in KEYS:
            s: Setting = getattr(self, key)
            value = redact_url(s.value) if key == "redis_url" and s.value else s.value
            out[key] = {"value": value, "source": s.source}
        return out


# the keys a fleet.toml may hold, with their types (a wrong type is named with its line)
KEYS: dict[str, type] = {"redis_url": str, "inventory": str, "secrets_file": str, "insecure_secrets": bool}
PATH_KEYS = ("inventory", "secrets_file")
ENV_OF = {"redis_url": ENV_REDIS_URL, "inventory": ENV_INVENTORY, "secrets_file": ENV_SECRETS_FILE}


def search_path(cwd: Path | None = None, env: dict[str, str] | None = None) -> tuple[Path, ...]:
    """Where a fleet.toml is looked for, first found wins: the working directory, then the user's config directory."""
    env = os.environ if env is None else env
    cwd = Path.cwd() if cwd is None else cwd
    xdg = env.get("XDG_CONFIG_HOME") or ""
    base = Path(xdg) if xdg and Path(xdg).is_absolute() else Path(env.get("HOME") or Path.home()) / ".config"
    return (cwd / FILE_NAME, base / "fleet" / FILE_NAME)


def _line_of(text: str, key: str) -> int | None:
    """The line that sets `key` (tomllib keeps no positions; a fleet.toml is flat, so the key's own line is it)."""
    pattern = re.compile(rf"^\s*(?:{re.escape(key)}|\"{re.escape(key)}\"|'{re.escape(key)}')\s*=")
    return next((n for n, line in enumerate(text.splitlines(), 1) if pattern.match(line)), None)


def check_redis_url(url: str) -> str | None:
    """Why `url` cannot be a Redis URL (None when it can); never quotes the URL (it may hold a password)."""
    if not url.startswith(REDIS_SCHEMES):
        return f"must start with {', '.join(REDIS_SCHEMES)} (redis://fleet:PASSWORD@host:6379/0)"
    return None


def read_file(path: Path) -> dict[str, Setting]:
    """The settings one fleet.toml gives, each with `path:line` as its source; FileError for anything wrong."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise FileError(path, None, "", f"cannot read: {exc.strerror or exc}") from None
    try:
        text = raw.decode("utf-8")
        doc = tomllib.loads(text)
    except UnicodeDecodeError as exc:
        raise FileError(path, text_line(raw, exc.start), "", "not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        m = re.search(r"\(at line (\d+), column \d+\)|\(at end of document\)", str(exc))
        line = int(m.group(1)) if m and m.group(1) else (text.count("\n") + 1 if m else None)
        reason = re.sub(r"\s*\(at (line \d+, column \d+|end of document)\)", "", str(exc))
        raise FileError(path, line, "", f"not valid TOML: {reason}") from None
    out: dict[str, Setting] = {}
    for key, value in doc.items():
        line = _line_of(text, key)
        if key not in KEYS:
            raise FileError(path, line, key, f"unknown key{values.did_you_mean(key, KEYS)}; known: {', '.join(KEYS)}")
        want = KEYS[key]
        if not isinstance(value, want):
            raise FileError(path, line, key, f"must be {'true or false' if want is bool else 'a string'}; "
                                             f"found {type(value).__name__}")
        if key == "redis_url" and (why := check_redis_url(value)):
            raise FileError(path, line, key, why)
        if key in PATH_KEYS:
            if not value:
                raise FileError(path, line, key, "must not be empty")
            value = str((path.parent / Path(value).expanduser()).resolve())
        out[key] = Setting(value, f"{path}:{line}" if line else str(path))
    return out


def text_line(raw: bytes, offset: int) -> int:
    return raw[:offset].count(b"\n") + 1


def load(cwd: Path | None = None, env: dict[str, str] | None = None) -> Settings:
    """The settings in force: the first fleet.toml found (see `search_path`), then the environment over it."""
    env = os.environ if env is None else env
    cwd = Path.cwd() if cwd is None else cwd
    searched = search_path(cwd, env)
    found = next((p for p in searched if p.is_file()), None)
    values_: dict[str, Setting] = read_file(found) if found else {}
    for key, var in ENV_OF.items():
        given = env.get(var)
        if not given:
            continue
        if key == "redis_url" and (why := check_redis_url(given)):
            raise FileError(f"environment variable {var}", None, "", why)
        values_[key] = Setting(str((cwd / Path(given).expanduser()).resolve()) if key in PATH_KEYS else given, var)
    return Settings(**values_, config_file=found, searched=searched)


def render(redis_url: str | None, inventory: str | None, secrets_file: str | None = None,
           insecure_secrets: bool = False) -> str:
    """A fleet.toml holding these values (the others left as comments, to be filled in later)."""
    def string(v: str) -> str:
        return json.dumps(v, ensure_ascii=False)   # a TOML basic string: JSON's escapes are TOML's too

    lines = ["# fleet's settings (`fleet config show` prints what is in force and where each value comes from).",
             "# Looked up in the working directory, then ~/.config/fleet/fleet.toml; FLEET_REDIS_URL, FLEET_INVENTORY",
             "# and FLEET_SECRETS_FILE override single values. Relative paths are relative to this file.", ""]
    lines += ["# the Redis every worker, collector and command of the fleet shares (holds a password: keep this file 0600)",
              f"redis_url = {string(redis_url)}" if redis_url else '# redis_url = "redis://fleet:PASSWORD@127.0.0.1:6379/0"', ""]
    lines += ["# the inventory every command uses when --inventory is not given",
              f"inventory = {string(inventory)}" if inventory else '# inventory = "site.yml"', ""]
    lines += ["# replaces the secrets_file the inventory names (unset: the inventory's own)",
              f"secrets_file = {string(secrets_file)}" if secrets_file else '# secrets_file = "secrets.yml"', ""]
    lines += ["# accept a secrets file that others can read (refused by default, as ssh refuses such keys)",
              f"insecure_secrets = {'true' if insecure_secrets else 'false'}", ""]
    return "\n".join(lines)


def export_secrets_file(settings: Settings, env: dict[str, str] | None = None) -> None:
    """Hand the secrets file in force to whatever loads the inventory later in this process or its children
    (fleet.config.inventory.load reads FLEET_SECRETS_FILE), so a worker's tasks and the CLI use the same one."""
    env = os.environ if env is None else env
    if settings.secrets_file.value:
        env[ENV_SECRETS_FILE] = settings.secrets_file.value
