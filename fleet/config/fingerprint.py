"""Content hashes of the inventory and secrets files a process uses: compared between workers and the CLI.

A worker reads its own inventory and secrets file; a CLI run reads its own. If
they differ (a worker started before the inventory changed, a CLI given another
secrets file) a rollout can "succeed" with the worker's secrets while the CLI's
are wrong. Each side hashes the bytes of both files (SHA-256: the content never
leaves the host, and any change, a comment included, counts) and the worker
publishes its hashes in Redis (fleet.state.store, `site:{site}:workers`).
"""
from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from pathlib import Path

from fleet.config.inventory import Inventory, secrets_path


@dataclass(frozen=True)
class FilesDigest:
    """Which inventory and secrets file (paths) and their SHA-256 ("" for no secrets file, "missing" for one that
    cannot be read)."""
    inventory_path: str
    inventory_sha256: str
    secrets_path: str
    secrets_sha256: str

    def to_dict(self) -> dict[str, str]:
        return asdict(self)

    def differs(self, other: "FilesDigest") -> list[str]:
        """Which files differ: "inventory", "secrets file" (in that order)."""
        return [name for name, a, b in (("inventory", self.inventory_sha256, other.inventory_sha256),
                                        ("secrets file", self.secrets_sha256, other.secrets_sha256)) if a != b]


def sha256_of(path: Path | None) -> str:
    if path is None:
        return ""
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return "missing"


def of(inventory: Inventory) -> FilesDigest:
    """The digest of a loaded inventory (its `source` file) and of the secrets file in force for it."""
    inv_path = Path(inventory.source) if inventory.source else None
    sec = secrets_path(inventory)
    return FilesDigest(str(inv_path or ""), sha256_of(inv_path), str(sec or ""), sha256_of(sec))
