"""File names a publisher may write, and the temporary names it writes them under.

A publisher writes plain file names into one directory of a boot server. The
names come from the renderer and from rollout state kept in Redis, so they are
checked here, before any I/O, by every publisher: a name that could leave the
directory, denote the directory itself, or that a server would choke on is
refused with a DriverError naming the publisher and the file.

Temporary files are never `<name>.part`: a fixed, guessable name is what lets
someone plant a symlink there. They get a random name beside the target instead
(and, where the protocol allows, are created exclusively without following links).
"""
from __future__ import annotations

import secrets

from fleet.drivers.errors import DeviceRefused

MAX_NAME_BYTES = 255   # NAME_MAX on Linux and most servers: one component, in bytes
TEMP_SUFFIX = ".fleet-part"


class UnsafeName(DeviceRefused):
    """A file name that no publisher passes to a boot server."""


def shown(filename: str) -> str:
    """The name as an error message shows it: quoted, escaped, cut to a readable length."""
    return repr(filename if len(filename) <= 60 else filename[:60] + "\u2026")


def check_name(publisher: str, filename: object) -> str:
    """`filename` if it is a plain name inside the publisher's directory; UnsafeName otherwise."""
    if not isinstance(filename, str):
        raise UnsafeName(publisher, f"file name {filename!r:.60} is not text")

    def refuse(why: str) -> UnsafeName:
        return UnsafeName(publisher, f"refusing file {shown(filename)}: {why}")

    if filename in ("", ".", ".."):
        raise refuse("names the boot directory itself, not a file in it")
    if "/" in filename or "\\" in filename:
        raise refuse("contains a path separator: only plain file names are published, never a path outside the boot directory")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in filename):
        raise refuse("contains a NUL or control character")
    try:
        size = len(filename.encode("utf-8"))
    except UnicodeEncodeError:
        raise refuse("is not valid UTF-8") from None
    if size > MAX_NAME_BYTES:
        raise refuse(f"is {size} bytes long, more than the {MAX_NAME_BYTES} a file name may have")
    return filename


def temp_name() -> str:
    """A fresh temporary name for the same directory: unguessable, hidden, short enough for any server."""
    return f".{secrets.token_hex(16)}{TEMP_SUFFIX}"
