"""The part of `fleet` and `hil` command lines that turns every way a command can end into an exit code.

Both tools promise the same thing: bad input exits 2 with one line naming file,
line and field; Ctrl-C exits 130; anything else is one line, never a traceback,
unless the tool's debug variable is set. What differs (how each prints, which
errors count as the infrastructure's) is left to the two hooks.
"""
from __future__ import annotations

import os
import sys
from abc import ABCMeta, abstractmethod
from typing import NoReturn

import click

from .fileerror import FileError

EXIT_INTERRUPTED = 130


def one_line(exc: BaseException | str, limit: int = 300) -> str:
    """The message on one line (a multi-line device answer stays greppable), cut at `limit` characters."""
    return " ".join(str(exc).split())[:limit]


class ExitCodeGroup(click.Group, metaclass=ABCMeta):
    """A click group that never lets an exception reach the user as a traceback. Each tool (fleet, hil) says
    what its exit codes are by implementing the two hooks."""

    debug_env = ""   # set by the tool: with this variable set, an unexpected error raises (traceback shown)

    @abstractmethod
    def bad_input(self, exc: FileError) -> NoReturn:
        """A file could not be used: exit 2."""

    @abstractmethod
    def unexpected(self, exc: Exception) -> NoReturn:
        """Any other exception: the infrastructure's fault (exit 3) or a bug (exit 4)."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException):
            raise
        except FileError as exc:
            self.bad_input(exc)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(EXIT_INTERRUPTED)
        except Exception as exc:
            if self.debug_env and os.environ.get(self.debug_env):
                raise
            self.unexpected(exc)
