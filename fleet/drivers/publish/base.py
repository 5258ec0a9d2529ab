"""What the publishers that see the boot server as a directory of files (local, SFTP) do the same way.

Deleting is one decision for both: an absent file is already deleted, a
directory under the name is refused rather than removed, and a symbolic link is
removed itself, never its target. Each publisher supplies how it looks at a
name without following links, how it removes one, and how it words a failure.
"""
from __future__ import annotations

import stat
from abc import ABC, abstractmethod

from fleet.drivers.errors import DeviceRefused, DriverError
from fleet.drivers.publish.names import check_name, shown


class DirectoryPublisher(ABC):
    name: str
    ERRORS: tuple[type[BaseException], ...] = (OSError,)   # what the transport raises for a failed operation
    A_DIRECTORY = "a directory"                            # how a refusal names a directory

    @abstractmethod
    def _lstat(self, name: str):
        """The name's attributes without following a link (`.st_mode`), or None when absent."""

    @abstractmethod
    def _unlink(self, name: str) -> None:
        """Remove the name itself (a link, never its target)."""

    @abstractmethod
    def _failure(self, verb: str, filename: str, exc: BaseException) -> DriverError:
        """The publisher's own wording of a failed operation, naming itself and the file, never a password."""

    def delete(self, filename: str) -> None:
        name = check_name(self.name, filename)
        try:
            st = self._lstat(name)
            if st is None:
                return
            if stat.S_ISDIR(st.st_mode or 0):
                raise DeviceRefused(self.name, f"cannot delete {shown(name)}: it is {self.A_DIRECTORY}")
            self._unlink(name)   # a symlink is removed itself, its target left alone
        except FileNotFoundError:
            return
        except self.ERRORS as exc:
            raise self._failure("delete", name, exc) from None
