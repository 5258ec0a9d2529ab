"""A publisher that reads each file once for the length of one task: the same answer without a second request.

A push reads the phone's master to render its files (fleet.sites.files) and reads it again a moment later to back
it up: the same file, the same content, one more round trip per phone to a server a whole site shares. Writes
and deletes go through at once and are remembered, so a later read sees what this task left there.
"""
from __future__ import annotations

from fleet.drivers.publish import Publisher


class ReadOnce:
    """Wraps one publisher for one task (not longer: another writer may change a file between two tasks)."""

    def __init__(self, inner: Publisher) -> None:
        self.inner = inner
        self.name = inner.name
        self._read: dict[str, bytes | None] = {}

    def read(self, filename: str) -> bytes | None:
        if filename not in self._read:
            self._read[filename] = self.inner.read(filename)
        return self._read[filename]

    def write(self, filename: str, data: bytes) -> None:
        self._read.pop(filename, None)     # forgotten first: a write that fails part-way leaves nothing known
        self.inner.write(filename, data)
        self._read[filename] = data

    def delete(self, filename: str) -> None:
        self._read.pop(filename, None)
        self.inner.delete(filename)
        self._read[filename] = None

    def close(self) -> None:
        self.inner.close()
