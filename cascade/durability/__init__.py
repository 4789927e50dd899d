"""Durability: snapshots taken while shards serve, recovery at start, and
the `cascade snapshot inspect|verify` command. Built on `storage/` (files)
and typed against what it needs of the engine; the engine knows nothing of it.

`service` runs it for the server (recovery, periodic snapshots, the final
one), `coordinator` writes a set, `recovery` loads the newest sound set and
the journal after it, `loader` fills one shard.
"""

from __future__ import annotations

from .cli import main as snapshot_cli
from .coordinator import SnapshotCoordinator
from .recovery import RecoveryRefused, RecoveryResult, recover

__all__ = ["RecoveryRefused", "RecoveryResult", "SnapshotCoordinator", "recover", "snapshot_cli"]
