"""Fills the stats series from the counters the engine already keeps.

Owns when the series is sampled and where each count lands. Nothing is
added to a send's path: the shards' cumulative counters (counters.py, bumped
by `evolve`) and timer-lateness histograms (shard_stats.py) are read, and
the difference since the last reading is counted into the minute of that
last reading. Readings are taken whenever the engine's clock has entered a
new minute since the last one, and before each answer, so:

- under a real or scaled clock a thread looks every `poll_s` (at most a
  second, at most 5 clock seconds): a count lands in its own minute, or at
  worst in the one before, by up to that much;
- under the manual clock the series is an engine extension: each instant
  an advance stops at (`settle_at`, before what is due there fires) is a
  reading, and between advances the clock does not move, so every count
  lands in the minute of the clock time it happened at, deterministically.

Counts come from templates' groups only (a campaign's sends also count in
their template). The ring is saved with its last reading (`save` gets the
bytes every `save_interval_s` of real time while counts change, and at
`stop`; 0: never). The first reading, at `start` (after recovery), is
compared with the restored one: what happened after it and was recovered
from the journal (a crash, a cluster partition's handover) is counted, into
the minute of that reading, and nothing is counted twice. Without a restored
reading (a first start, or saved bytes from before readings were kept) the
first one is only a baseline, saved at once. Lateness counts are the
process's own and start again from zero.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING, Any, Callable

from .clock import Clock
from ..domain.records import SeriesKept
from .commands import Command
from .counters import SEND_COLUMNS, STEP_COLUMNS
from .reply import Reply
from .router import Router
from .series import COLUMNS, DURABLE_COLUMNS, OUTCOMES, SeriesRing

if TYPE_CHECKING:
    from .supervisor import Engine

__all__ = ["SeriesSampler", "attach_series"]

_log = logging.getLogger("cascade.series")

_INDEX = {name: i for i, name in enumerate(COLUMNS)}
# (column of the series, column of a group's send counts) for what both know
_SENDS = [(_INDEX[f"sends.{name}"], SEND_COLUMNS.index(name)) for name in ("started", *OUTCOMES)
          if name in SEND_COLUMNS]
_STEPS = [(count, STEP_COLUMNS.index(count)) for count in ("requested", "delivered", "viewed", "clicked", "failed")]
_LATE = _INDEX["late.0"]
READ_TIMEOUT_S = 10.0


class SeriesSampler:
    """An engine extension (extension.py) owning the series of one engine. `in_snapshots`: the ring
    is a `SeriesKept` record of the engine's snapshots (and of its journal, when `save` appends one)."""

    def __init__(self, clock: Clock, router: Router, *, save: Callable[[bytes], None] | None = None,
                 save_interval_s: float = 60.0, monotonic: Callable[[], float] = time.monotonic,
                 in_snapshots: bool = False) -> None:
        self.clock = clock
        self.router = router
        self.ring = SeriesRing()
        self.record_types: tuple[type, ...] = (SeriesKept,) if in_snapshots else ()
        self._save = save if save_interval_s > 0 else None
        self.save_interval_s = save_interval_s
        self._monotonic = monotonic
        rate = float(getattr(clock, "rate", 1.0))
        self.poll_s = min(1.0, 5.0 / rate)
        self._lock = threading.Lock()
        self._last: list[int] | None = None  # the cumulative counts of the last reading
        self._last_at = 0.0  # the clock time of the last reading
        self._restored: tuple[float, list[int | None]] | None = None  # the saved ring's reading
        self._dirty = False  # counted since the last save
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- Extension --------------------------------------------------------------
    def records(self) -> list[Any]:
        if not self.record_types:
            return []
        with self._lock:  # no reading here: a snapshot holds the shards, and a reading asks them
            return [SeriesKept(self._encode())]

    def apply(self, record: Any) -> None:
        """A `SeriesKept` (recovery): the newest ring replaces what came before it."""
        try:
            self.restore(record.ring)
        except ValueError as exc:
            _log.warning("stats series record not read (%s); the minutes before it are gone", exc)

    def restore(self, data: bytes) -> None:
        """Saved bytes (encode's) replace the ring, before `start`. Raises ValueError if not a series."""
        ring = SeriesRing()
        reading = ring.load(data)
        with self._lock:
            self.ring, self._restored = ring, reading

    def next_due(self) -> float | None:
        return None  # never a reason for an advance to stop: it reads at the stops there are

    def settle_at(self, t: float) -> None:
        if self._last is None or t // 60 != self._last_at // 60:
            self.sample()

    def start(self) -> None:
        baseline = self._restored is None
        self.sample()
        if baseline:  # from now on a crash or a handover finds a reading to go on from
            with self._lock:
                self._dirty = True
            self.save()
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="cascade-series", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._thread is None:
            return  # never started (a start that failed before the engine ran)
        self._stop.set()
        self._thread.join()
        self._thread = None
        self.sample()
        self.save()

    # -- reading ----------------------------------------------------------------
    def sample(self) -> None:
        """Read the engine's counters and count what changed (blocking: not
        on an event loop whose replies it would wait for; it posts directly)."""
        with self._lock:
            now = self.clock.now()
            counts = self._read()
            if counts is None:
                return
            if self._last is None and self._restored is not None:
                at, restored = self._restored
                self._restored = None
                self._last = [b if i in DURABLE_COLUMNS and b is not None else c
                              for i, (b, c) in enumerate(zip(restored, counts))]
                self._last_at = at
            if self._last is not None:
                delta = [max(0, a - b) for a, b in zip(counts, self._last)]
                if any(delta):
                    self.ring.add(int(self._last_at // 60), delta)
                    self._dirty = True
            self._last, self._last_at = counts, now

    def fresh_ring(self) -> bytes:
        """A fresh reading, then the ring's bytes (a cluster gathers its partitions' rings). Blocking."""
        self.sample()
        with self._lock:
            return self.ring.encode()

    def _encode(self) -> bytes:
        """The ring and the reading it is complete up to (under the lock)."""
        return self.ring.encode((self._last_at, self._last) if self._last is not None else None)

    def view(self, minutes: int, step: int) -> dict[str, Any]:
        """A fresh reading, then the window (series.py `points`). Blocking."""
        self.sample()
        with self._lock:
            return self.ring.points(self.clock.now(), minutes, step)

    def _read(self) -> list[int] | None:
        """Every shard's totals and statistics, summed into the series' columns."""
        n = self.router.shards
        totals = [Reply() for _ in range(n)]
        stats = [Reply() for _ in range(n)]
        try:
            for i in range(n):
                # post, not submit: told at once from any thread, and counted, never refused
                self.router.post(i, [Command("totals", None, totals[i]), Command("stats", None, stats[i])])
            parts = [(t.wait(READ_TIMEOUT_S), s.wait(READ_TIMEOUT_S)) for t, s in zip(totals, stats)]
        except Exception as exc:  # a shard that cannot answer (stopping, a timeout): read next time
            _log.warning("stats series: the shards did not answer: %s", exc)
            return None
        counts = [0] * len(COLUMNS)
        for groups, stat in parts:
            for name, (sends, rows) in groups.items():
                if not name.startswith("t:"):
                    continue  # campaigns' sends count in their template's group too
                for col, k in _SENDS:
                    counts[col] += sends[k]
                for (_, channel), row in rows.items():
                    for count, k in _STEPS:
                        at = _INDEX.get(f"{channel}.{count}")
                        if at is not None:
                            counts[at] += row[k]
            for i, v in enumerate(stat.get("lateness_counts", ())):
                counts[_LATE + i] += v
        return counts

    # -- the thread and the file -----------------------------------------------------
    def _run(self) -> None:
        saved = self._monotonic()
        while not self._stop.wait(self.poll_s):
            try:
                if self.clock.now() // 60 != self._last_at // 60:
                    self.sample()
                if self._save is not None and self._monotonic() - saved >= self.save_interval_s:
                    saved = self._monotonic()
                    self.save()
            except Exception:  # a bug must not end the series
                _log.exception("stats series sampling failed")

    def save(self) -> None:
        """Hand the ring's bytes to `save` if anything was counted since the last time."""
        if self._save is None:
            return
        with self._lock:
            if not self._dirty:
                return
            data = self._encode()
            self._dirty = False
        try:
            self._save(data)
        except Exception as exc:  # noqa: BLE001 - a full disk must not stop the engine
            _log.warning("stats series not saved: %s", exc, extra={"event": "series_not_saved"})


def attach_series(engine: Engine, *, save: Callable[[bytes], None] | None = None,
                  save_interval_s: float = 60.0, in_snapshots: bool = False) -> SeriesSampler:
    """Keep a stats series of `engine` (before it starts, like any extension)."""
    sampler = SeriesSampler(engine.clock, engine.router, save=save, save_interval_s=save_interval_s,
                            in_snapshots=in_snapshots)
    engine.attach(sampler)
    return sampler
