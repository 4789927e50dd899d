"""Durability for a running server, in one place: the journal under
`<data_dir>/journal`, snapshots under `<data_dir>/snapshots`, recovery at
start, periodic and on-demand snapshots, a final snapshot at shutdown, and
the figures `/metrics` publishes.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from typing import Any

from ..domain.errors import Overloaded
from ..domain.records import ClockMoved, ShardLayout
from ..storage.journal import FileJournal
from .coordinator import SnapshotCoordinator
from .recovery import RecoveryResult, recover

__all__ = ["DataDirError", "Durability"]

log = logging.getLogger("cascade.durability")


class DataDirError(Exception):
    """The data directory cannot be made or used (it lies under a file, is
    not writable, ...): names the directory and the reason."""

    def __init__(self, data_dir: str, cause: OSError) -> None:
        self.data_dir = data_dir
        self.cause = cause
        reason = cause.strerror or str(cause)
        where = f" ({cause.filename})" if cause.filename not in (None, data_dir) else ""
        super().__init__(f"storage.data_dir {data_dir} cannot be used: {reason}{where}")


class Durability:
    def __init__(self, data_dir: str, fsync: str = "batch", keep: int = 3, interval_s: float = 60.0,
                 sync_interval_s: float = 0.0) -> None:
        self.data_dir = os.path.abspath(data_dir)
        self.snapshot_dir = os.path.join(self.data_dir, "snapshots")
        try:
            os.makedirs(self.snapshot_dir, exist_ok=True)
            self.journal = FileJournal(os.path.join(self.data_dir, "journal"), fsync=fsync,
                                       sync_interval_s=sync_interval_s)
        except OSError as exc:
            raise DataDirError(self.data_dir, exc) from exc
        report = self.journal.recovery_report
        if not report.clean:
            for issue in report.issues:
                log.warning("journal repaired at start: %s", issue, extra={"event": "journal_repair"})
        self.keep = keep
        self.interval_s = interval_s
        self.coordinator: SnapshotCoordinator | None = None
        self.recovery: RecoveryResult | None = None

    def recover(self, engine: Any) -> RecoveryResult:
        """Load the newest sound snapshot and replay the journal (blocking)."""
        self.recovery = recover(engine, self.snapshot_dir, self.journal)
        self.persist_start(engine)
        log.info("recovered %d snapshot records and replayed %d journal records in %.3f s",
                 self.recovery.snapshot_records, self.recovery.replayed, self.recovery.seconds,
                 extra={"event": "recovery", **self.recovery.summary()})
        self.coordinator = SnapshotCoordinator(engine, self.journal, self.snapshot_dir, self.keep, self.interval_s,
                                               covered=self.recovery.snapshot_position)
        return self.recovery

    def start(self) -> None:
        assert self.coordinator is not None
        self.coordinator.start()

    def close(self, final_snapshot: bool = True) -> None:
        """Stop periodic snapshots, write a last one, close the journal."""
        if self.coordinator is not None:
            self.coordinator.stop()
            if final_snapshot:
                try:
                    self.coordinator.take()
                except Exception:
                    log.exception("final snapshot failed; the journal holds everything")

    def close_journal(self) -> None:
        self.journal.close()

    # -- the admin API (POST/GET /v1/admin/snapshots) ------------------------------
    async def snapshot(self) -> dict[str, Any]:
        coordinator = self._ready_coordinator()
        taken = await asyncio.get_running_loop().run_in_executor(None, coordinator.take)
        return {k: v for k, v in taken.items() if k != "createdAtSeconds"}

    async def list_snapshots(self) -> list[dict[str, Any]]:
        return self._ready_coordinator().list()

    def _ready_coordinator(self) -> SnapshotCoordinator:
        if self.coordinator is None:
            raise Overloaded("recovery is still running; snapshots can be taken once it is done")
        return self.coordinator

    def persist_start(self, engine: Any) -> None:
        """Before anything else is journaled: the shard layout the records
        after it are written in (replay routes by it), and where a manual or
        scaled clock starts, so a restart before anything else keeps it too."""
        records: list[Any] = [ShardLayout(engine.shards)]
        if getattr(engine.clock, "mode", "real") != "real":
            records.append(ClockMoved(engine.clock.now()))
        done = threading.Event()
        self.journal.append(records, done.set)
        done.wait()

    # -- figures for /metrics ---------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        last = self.coordinator.last if self.coordinator is not None else None
        journal = self.journal.stats()
        return {
            "duration_seconds": last["seconds"] if last else 0.0,
            "bytes": last["bytes"] if last else 0,
            # An idle server skips its periodic snapshots: the newest set is
            # then as good as new, and says so (alerts on its age stay quiet).
            "last_timestamp_seconds": self.coordinator.current_at if self.coordinator is not None else 0.0,
            "fsync_buckets": journal.fsync_buckets,
            "fsync_seconds_sum": journal.fsync_seconds_sum,
            "journal_records": journal.records,
            "journal_position": journal.position,
            "recovery_seconds": self.recovery.seconds if self.recovery else 0.0,
            "recovery_replayed": self.recovery.replayed if self.recovery else 0,
            "now": time.time(),
        }
