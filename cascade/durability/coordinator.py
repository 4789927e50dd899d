"""Taking snapshots: every `snapshot_interval_s`, on demand, and at shutdown.

A snapshot set is one file per engine shard (1..n) plus the front file
(shard 0, written last), all named by the journal position when the set
began. Shards write theirs
in slices between their own work (`engine/shard_snapshot.py`), so there is
no global pause. Afterwards the newest `keep` sets are kept and journal
segments older than the oldest kept set are deleted.

A periodic snapshot is skipped when nothing was journaled since the newest
set began (an idle server would only write the same state again): every
change of state is journaled, so an unchanged journal position means an
unchanged state. A scaled clock moves without being journaled, so under it
every period writes. On demand and at shutdown a set is always written.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any, Callable, Protocol, Sequence

from ..domain.templates import TemplateRegistry
from ..domain.timefmt import iso
from ..engine.clock import Clock
from ..storage.codec import pack
from ..storage.files import list_snapshots, prune_snapshots, read_snapshot, write_snapshot
from ..storage.journal import Journal

__all__ = ["SnapshotCoordinator"]

log = logging.getLogger("cascade.snapshots")



class Snapshottable(Protocol):
    """What a snapshot set needs of the engine (engine/supervisor.py's Engine)."""

    clock: Clock
    templates: TemplateRegistry
    states: Sequence[Any]

    def snapshot_shards(self, directory: str, set_position: int, write: Callable[..., Any],
                        pack: Callable[[Any], Any]) -> list[Any]: ...

    def front_records(self) -> list[Any]: ...

class SnapshotCoordinator:
    def __init__(self, engine: Snapshottable, journal: Journal, directory: str, keep: int = 3, interval_s: float = 60.0,
                 covered: int | None = None, on_written: Callable[[], None] | None = None) -> None:
        """`covered`: the journal position of the set on disk that holds the
        current state (the one recovery loaded), if any. `on_written` runs
        once a set is complete and before the journal is cut behind it (a
        cluster copies the set where the next owner finds it: cutting first
        could leave that owner an older set and a journal that no longer
        reaches it)."""
        self.on_written = on_written
        self.engine = engine
        self.journal = journal
        self.directory = directory
        self.keep = keep
        self.interval_s = interval_s
        self.last: dict[str, Any] | None = None  # the latest set written: for /metrics and the admin API
        self.taken = 0
        self.skipped = 0  # periodic snapshots not written: nothing had changed
        self.current_at = 0.0  # Unix time the newest set was last known current (written, or a skip found it so)
        self._covered = covered  # journal position at which the newest set began
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self.interval_s > 0:
            self._thread = threading.Thread(target=self._run, name="cascade-snapshots", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.take_if_changed()
            except Exception:
                log.exception("periodic snapshot failed; the journal keeps everything meanwhile")

    def changed(self) -> bool:
        """Whether a snapshot now would hold anything the newest set lacks."""
        if self._covered is None or getattr(self.engine.clock, "mode", "real") == "scaled":
            return True
        return bool(self.journal.position() != self._covered)

    def take_if_changed(self) -> dict[str, Any] | None:
        """`take()`, unless nothing was journaled since the newest set began
        (then None: that set is still the current state)."""
        with self._lock:
            if not self.changed():
                self.skipped += 1
                self.current_at = time.time()
                return None
            return self.take()

    def take(self) -> dict[str, Any]:
        """Write a snapshot set now (blocking; call from a thread)."""
        with self._lock:  # reentrant: take_if_changed holds it already
            began = time.perf_counter()
            position = self.journal.position()
            engine = self.engine
            snaps = engine.snapshot_shards(self.directory, position, write_snapshot, pack)
            shard_infos = [s.result() for s in snaps]
            # The front goes last: a set without one was interrupted, and
            # recovery passes over it quietly. Its state is at least as new
            # as every shard's, which the journal replay relies on; and the
            # journal must hold every position the set names before the set
            # is complete, or a crash now would leave a set ahead of it.
            front_position = self.journal.position()
            self._sync()
            front = write_snapshot(self.directory, 0, {
                "journal_position": position, "shard_position": front_position, "kind": "front",
                "shards": len(engine.states), "counts": {"templates": len(engine.templates.all())},
            }, engine.front_records())
            infos = [front] + shard_infos
            if self.on_written is not None:
                self.on_written()
            seconds = time.perf_counter() - began
            self._prune()
            sends = sum(i.header.get("counts", {}).get("sends", 0) for i in infos[1:])
            self.last = {
                "file": os.path.basename(front.path), "journalPosition": position,
                "files": [i.path for i in infos], "sends": sends, "bytes": sum(i.bytes for i in infos),
                "seconds": round(seconds, 3), "createdAt": iso(time.time()), "createdAtSeconds": time.time(),
            }
            self.taken += 1
            self._covered = position
            self.current_at = self.last["createdAtSeconds"]
            log.info("snapshot written: position %d, %d sends, %d bytes, %.3f s",
                     position, sends, self.last["bytes"], seconds)
            return self.last

    def _sync(self) -> None:
        """Wait until everything appended so far is durable."""
        done = threading.Event()
        self.journal.append([], done.set)
        done.wait()

    def _prune(self) -> None:
        prune_snapshots(self.directory, self.keep)
        sets = list_snapshots(self.directory)
        if not sets:
            return
        oldest = sets[-1]
        needed = min(read_snapshot(path)[0]["shard_position"] for path in oldest.paths.values())
        self.journal.drop_before(needed)

    def list(self) -> list[dict[str, Any]]:
        out = []
        for s in list_snapshots(self.directory):
            out.append({"journalPosition": s.journal_position, "files": sorted(s.paths.values())})
        return out
