"""One partition owned by this node: an engine over the partition's stream journal.

A partition is a whole engine (one shard) whose journal is the
partition's JetStream stream (stream_journal.py) and whose snapshots are
copied to the object store (snapshot_store.py), so whichever node owns it
next recovers it the way a single server recovers from its data directory:
the newest snapshot set, then the journal after it, through the same apply
path. Opening is a takeover (the journal publishes it with the lease's
epoch); from then on JetStream refuses the writes of any older owner.

The engines of one node share its template registry (filled from the
templates bucket), its in-flight requests (the watermark: a window waits
for the front door's requests) and its delivery dispatcher.

Invariants: `close` is the only way out and runs once, whether the node
hands the partition over (final snapshot, copied) or lost it (fenced:
nothing more is written, the state is dropped); a lost partition stops
answering at once (`serving` turns False before anything else happens).
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from ..campaigns import attach_campaigns
from ..delivery.providers.base import Provider
from ..domain.records import SeriesKept, ShardLayout
from ..domain.templates import TemplateRegistry
from ..durability.coordinator import SnapshotCoordinator
from ..durability.recovery import RecoveryResult, recover
from ..engine import Engine, EngineConfig
from ..engine.arrivals import InFlight
from ..engine.background import Background
from ..engine.clock import Clock
from ..engine.series_sampler import attach_series
from ..engine.shard import SubmitJobs
from ..storage.journal import JournalError
from .client import NatsThread
from .rows_store import RowsStore
from .snapshot_store import SnapshotStore
from .stream_journal import StreamJournal

__all__ = ["Partition", "PartitionSettings"]

log = logging.getLogger("cascade.cluster.partition")
SERIES_SAVE_S = 10.0


class PartitionSettings:
    """What every partition of a node is built with."""

    def __init__(self, *, node: str, prefix: str, replicas: int, data_dir: str, clock: Clock,
                 providers: Mapping[str, Provider], engine: EngineConfig, submit_jobs: SubmitJobs | None,
                 templates: TemplateRegistry, in_flight: InFlight, snapshots: SnapshotStore,
                 snapshot_interval_s: float, reassert_templates: Callable[[], None], rows_store: RowsStore,
                 background: Background, campaign_sends_per_s: float = 0.0) -> None:
        self.node, self.prefix, self.replicas, self.data_dir = node, prefix, replicas, data_dir
        self.clock, self.providers, self.engine, self.submit_jobs = clock, providers, engine, submit_jobs
        self.templates, self.in_flight, self.snapshots = templates, in_flight, snapshots
        self.snapshot_interval_s, self.reassert_templates = snapshot_interval_s, reassert_templates
        self.rows_store, self.background, self.campaign_sends_per_s = rows_store, background, campaign_sends_per_s


class Partition:
    """Open with `Partition.open` (blocking: recovery); `close` when handed over or lost."""

    def __init__(self, number: int, epoch: int, settings: PartitionSettings, journal: StreamJournal,
                 engine: Engine, recovery: RecoveryResult, directory: str) -> None:
        self.number, self.epoch, self.settings = number, epoch, settings
        self.journal, self.engine, self.recovery, self.directory = journal, engine, recovery, directory
        self.serving = True
        self.handing_over = False  # serving stopped, the last snapshot is being written
        self.lost = False  # fenced or lease gone: nothing it still writes will be acknowledged
        self.may_write: Callable[[], bool] = lambda: self.serving or self.handing_over  # the node adds its lease
        self.opened_at = time.time()
        self._closed = threading.Event()
        self._lock = threading.Lock()
        snapshottable: Any = engine  # the protocols durability is typed against (as service.py passes it)
        self.coordinator = SnapshotCoordinator(snapshottable, journal, directory, keep=2, interval_s=0.0,
                                               covered=recovery.snapshot_position, on_written=self._copy_out)
        self._stop = threading.Event()
        self._snapshots: threading.Thread | None = None

    @classmethod
    def open(cls, number: int, epoch: int, settings: PartitionSettings,
             on_lost: Callable[[Partition, str], None]) -> Partition:
        """Take the partition over with `epoch`: journal, newest snapshot, replay, start."""
        s = settings
        began = time.perf_counter()
        holder: list[Partition] = []
        lost_early: list[str] = []

        def journal_lost(exc: JournalError) -> None:
            if holder:
                on_lost(holder[0], str(exc))
            else:
                lost_early.append(str(exc))

        client: NatsThread = s.snapshots.client
        journal = StreamJournal(client, number, s.node, epoch, replicas=s.replicas, prefix=s.prefix,
                                on_lost=journal_lost)
        directory = os.path.join(s.data_dir, "partitions", f"p{number}")
        try:
            os.makedirs(directory, exist_ok=True)
            s.snapshots.download(number, directory)
            engine = Engine(s.clock, s.providers, s.engine, submit_jobs=s.submit_jobs, journal=journal,
                            templates=s.templates, in_flight=s.in_flight)
            # GET /v1/stats/series gathers every partition's. Its ring is in the partition's snapshots and
            # journaled every SERIES_SAVE_S, so a new owner goes on with it (a kill -9 loses at most that).
            def save_series(ring: bytes) -> None:
                journal.append([SeriesKept(ring)])
            attach_series(engine, save=save_series, save_interval_s=SERIES_SAVE_S, in_snapshots=True)
            # This partition's parts of campaigns (cluster/campaigns.py); rows from the rows bucket. Its
            # fan-out yields to the node's requests, through the one switch interval of the process.
            engine.background = s.background
            attach_campaigns(engine, os.path.join(directory, "campaigns"), s.campaign_sends_per_s, s.rows_store)
            recoverable: Any = engine
            recovery = recover(recoverable, directory, journal)
            s.reassert_templates()  # the snapshot's template records are older than the bucket's
            done = threading.Event()
            journal.append([ShardLayout(engine.shards)], done.set)
            if not done.wait(30.0):
                raise JournalError(f"partition {number}: the layout record was not acknowledged in 30 s")
            engine.start()
        except BaseException:
            journal.close()
            raise
        partition = cls(number, epoch, s, journal, engine, recovery, directory)
        holder.append(partition)
        if lost_early:
            on_lost(partition, lost_early[0])
        else:
            partition._start_snapshots()
        log.info("partition %d: owned with epoch %d; %d snapshot records, %d replayed, in %.3f s",
                 number, epoch, recovery.snapshot_records, recovery.replayed, time.perf_counter() - began,
                 extra={"event": "partition_owned", "partition": number, "epoch": epoch,
                        "seconds": round(time.perf_counter() - began, 3)})
        return partition

    def _start_snapshots(self) -> None:
        if self.settings.snapshot_interval_s > 0:
            self._snapshots = threading.Thread(target=self._run_snapshots, name=f"cascade-p{self.number}-snapshots",
                                               daemon=True)
            self._snapshots.start()

    def _run_snapshots(self) -> None:
        while not self._stop.wait(self.settings.snapshot_interval_s):
            try:
                self.coordinator.take_if_changed()
            except Exception:
                if self.serving:
                    log.exception("partition %d: snapshot failed; the stream keeps everything", self.number)

    def _copy_out(self) -> None:
        """The set just written, into the object store, before the stream is cut behind it. Never by an
        owner whose lease ran out (a paused process waking up): its state may hold writes JetStream
        refused, and a set of it would hand them to the next owner."""
        if not self.may_write():
            raise RuntimeError(f"partition {self.number}: no longer owned; the snapshot is not copied out")
        self.settings.snapshots.upload(self.number, self.directory)

    def position(self) -> int:
        return self.journal.position()

    def close(self, handover: bool, reason: str) -> None:
        """Stop serving. `handover`: write a last snapshot (copied out) so the next owner replays little."""
        with self._lock:
            if self._closed.is_set():
                return
            self._closed.set()
            self.serving = False
        self._stop.set()
        if self._snapshots is not None and self._snapshots is not threading.current_thread():
            self._snapshots.join(timeout=60.0)
        if handover:
            self.handing_over = True
            try:
                self.coordinator.take()
            except Exception:
                log.exception("partition %d: last snapshot before the handover failed; the stream has everything",
                              self.number)
        try:
            self.engine.stop()
        finally:
            self.journal.close()
            if not handover:  # fenced or lost: local copies may be ahead of what was acknowledged
                shutil.rmtree(self.directory, ignore_errors=True)
        log.info("partition %d: no longer owned (%s)", self.number, reason,
                 extra={"event": "partition_released", "partition": self.number, "reason": reason,
                        "handover": handover})
