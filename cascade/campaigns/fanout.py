"""The campaign fan-out: one thread turning rows files into sends.

It reads each running campaign's rows in order, a chunk at a time, and
starts them through the engine's bulk path (`Engine.submit_batches`: no
views, one command per row, per-shard messages of at most `message`
commands). Invariants:

- a row starts at most once: the fan-out skips rows whose bit is set in
  the shards' started-rows bitmaps (recovered from snapshots and the
  journal: exactly the rows whose send record is durable), and in one
  process it reads each row once;
- transactional traffic comes first. Before each chunk the fan-out waits
  until the shards' queues hold at most about one chunk (whoever put it
  there), then yields to requests in flight and keeps the process under its
  CPU share (`background.py`, bounded waits); chunks are small and split
  into small per-shard messages, so a `POST /v1/sends` never queues behind
  more than a fraction of a millisecond of campaign work;
- `max_sends_per_s` (0: unlimited) paces the chunks on top of that;
- a chunk is submitted under the campaign lock after checking the status,
  so a cancel is never overtaken by a chunk read before it;
- up to `inflight` chunks of a campaign await durability at once (the
  journal's group commit overlaps with the next chunks); a campaign is
  completed once its last chunk is durable.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from typing import Any, Callable, Iterator

from ..domain.bitmaps import bit_is_set
from ..domain.errors import Overloaded
from ..domain.ids import SLOTS, new_send_key, slot_of
from ..domain.recipients import RecipientUpdate
from ..domain.templates import TemplateVersion
from ..engine.clock import ManualClock
from ..engine.commands import Command
from .book import RUNNING, Campaign, CampaignBook
from .host import CampaignHost
from .rows import Row, iter_rows

__all__ = ["Fanout"]

_log = logging.getLogger("cascade.fanout")

# Measured on one core (bench/campaign.py): 128-row chunks in 32-command
# messages still fan out at ~80,000 sends/s flat out, while 2,000-row chunks
# made a transactional send wait behind ~20 ms of campaign work at p99.
CHUNK = 128
MESSAGE = 32
# New sends are frozen out of the collector's sight every this many rows
# (`GcGovernor.freeze_now`, when nothing waits on it), so no collection walks
# more than a few thousand of them (~1 ms); at the governor's own pace (0.5 s)
# a generation-2 collection walked 50,000 sends and paused 15-30 ms. The
# governor's price applies (gc_governor.py): a reference cycle alive at a
# freeze that dies later is never collected; `gc_freeze_interval_s = 0`
# turns this off with the governor.
FREEZE_ROWS = 2048


class _Job:
    __slots__ = ("campaign", "tpl", "rows", "skip", "next_row", "exhausted", "inflight")

    def __init__(self, campaign: Campaign, tpl: TemplateVersion, rows: Iterator[Row], skip: bytes | None) -> None:
        self.campaign, self.tpl, self.rows, self.skip = campaign, tpl, rows, skip
        self.next_row = 0
        self.exhausted = False
        self.inflight: deque[tuple[Any, int]] = deque()


class Fanout:
    def __init__(self, engine: CampaignHost, book: CampaignBook, max_sends_per_s: float = 0.0, chunk: int = CHUNK,
                 message: int = MESSAGE, inflight: int = 8, monotonic: Callable[[], float] = time.monotonic) -> None:
        self.engine, self.book = engine, book
        self._monotonic = monotonic  # pacing and the rate gauge; injected, so tests can play time
        self.rate = max_sends_per_s
        # Paced: about 20 chunks a second, so the rate holds over short spans too.
        self.chunk = chunk if self.rate <= 0 else max(1, min(chunk, int(self.rate / 20)))
        self.message, self.inflight = message, inflight
        self.started_total = 0
        self._jobs: dict[str, _Job] = {}
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._next_at = 0.0
        self._window: deque[tuple[float, int]] = deque()  # (monotonic, started) for the rate gauge
        self._since_freeze = 0
        self._holding = False  # the switch interval of `engine.background`

    # -- lifecycle -----------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="cascade-fanout", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join()
        for job in self._jobs.values():
            self._close(job)
        self._jobs.clear()
        self._busy(False)

    def _busy(self, busy: bool) -> None:
        if busy != self._holding:
            self._holding = busy
            (self.engine.background.hold if busy else self.engine.background.release)()

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and not self._stop.is_set()

    def wake(self) -> None:
        self._wake.set()

    def _run(self) -> None:
        engine, book = self.engine, self.book
        while not self._stop.is_set():
            self._wake.clear()
            book.promote_due(engine.clock.now())
            running = book.running()
            for gone in set(self._jobs) - {c.id for c in running}:
                self._close(self._jobs.pop(gone))
            self._busy(bool(running))
            if not running:
                # Real and scaled clocks reach scheduledAt on their own: look again each tick.
                scheduled = book.next_start() is not None and not isinstance(engine.clock, ManualClock)
                self._wake.wait(engine.tick_interval_s if scheduled else 1.0)
                continue
            for c in running:
                if self._stop.is_set():
                    break
                try:
                    self._step(c)
                except Exception:  # a bug must not end the fan-out of every campaign
                    _log.exception("fan-out of campaign %s failed", c.id)
                    c.problem = "the fan-out failed; see the server log"
                    self._drop(c.id)
            with book.cond:
                book.cond.notify_all()  # settle() waiters look again

    # -- one chunk of one campaign ----------------------------------------------------
    def _open(self, c: Campaign) -> _Job | None:
        tpl = self.engine.templates.version(c.template, c.version)
        if tpl is None:
            c.problem = f"template {c.template!r} version {c.version} is missing"
            return None
        try:
            self.book.local_rows(c)
        except FileNotFoundError:
            pass  # gone for good: reading them says so (the campaign's problem)
        except Exception:  # noqa: BLE001 - the rows store is away for a moment: try again shortly
            _log.warning("campaign %s: its rows could not be fetched; retrying", c.id, exc_info=True)
            self._stop.wait(1.0)
            return None
        skip = None
        if c.recovered:  # rows that started before the restart: their bits are with the shards
            skip = self.engine.campaign_rows_started(c.id).wait(None)
            c.started = int.from_bytes(skip, "little").bit_count() if skip else 0
        return _Job(c, tpl, iter_rows(c.rows, self.book.directory), skip)

    def _step(self, c: Campaign) -> None:
        job = self._jobs.get(c.id)
        if job is None:
            job = self._open(c)
            if job is None:
                if c.problem is not None:
                    _log.error("campaign %s cannot fan out: %s", c.id, c.problem)
                return
            self._jobs[c.id] = job
        rows = self._read(job)
        if rows:
            batches = self._commands(job, rows)
            self._pace(len(rows))
            while True:
                with self.book.cond:
                    if c.status != RUNNING:
                        self._drop(c.id)
                        return
                    try:
                        reply = self.engine.submit_batches(batches, self.message)
                        break
                    except Overloaded:
                        if not self.engine.started:
                            return
                self._stop.wait(0.01)  # a shard's queue is full: let it drain
            job.inflight.append((reply, len(rows)))
        while job.inflight and (len(job.inflight) >= self.inflight or job.exhausted
                                or job.inflight[0][0].done()):
            self._await(job)
        if job.exhausted and not job.inflight:
            self._drop(c.id)
            self.book.complete(c)

    def _read(self, job: _Job) -> list[tuple[int, str, Any, Any]]:
        rows: list[tuple[int, str, Any, Any]] = []
        skip = job.skip
        try:
            while len(rows) < self.chunk:
                row = next(job.rows, None)
                if row is None:
                    job.exhausted = True
                    break
                i = job.next_row
                job.next_row += 1
                if skip is None or not bit_is_set(skip, i):
                    rows.append((i, *row))
        except (OSError, ValueError) as exc:
            job.campaign.problem = f"its rows cannot be read: {exc}"
            _log.error("campaign %s stops: %s", job.campaign.id, job.campaign.problem)
            self._drop(job.campaign.id)
            return []
        return rows

    def _commands(self, job: _Job, rows: list[tuple[int, str, Any, Any]]) -> list[list[Any]]:
        c, tpl = job.campaign, job.tpl
        groups = (f"t:{tpl.id}", c.group)
        n = self.engine.shards
        default = c.data
        trusted = RecipientUpdate.trusted
        batches: list[list[Any]] = [[] for _ in range(n)]
        cid = c.id
        for i, rid, fields, data in rows:
            slot = slot_of(rid)
            batches[slot * n // SLOTS].append(Command("start", (
                new_send_key(slot), tpl, rid, trusted(fields) if fields else None,
                default if data is None else data, groups, (cid, i), False, None)))
        return batches

    def _await(self, job: _Job) -> None:
        reply, n = job.inflight[0]
        try:
            reply.wait(None)
        except Exception:
            _log.exception("a shard failed on a chunk of campaign %s", job.campaign.id)
        job.inflight.popleft()
        job.campaign.started += n
        self.started_total += n
        self._window.append((self._monotonic(), n))
        self._since_freeze += n

    def _pace(self, n: int) -> None:
        if self.rate > 0:
            now = self._monotonic()
            if self._next_at > now:
                self._stop.wait(self._next_at - now)
            self._next_at = max(self._next_at, now) + n / self.rate
        # Yield to transactional traffic: never more than about a chunk queued
        # in the shards (whoever queued it), then (a while) not while requests
        # are served or the process is busy (see background.py).
        engine, limit = self.engine, self.chunk
        while engine.pending() > limit and not self._stop.is_set():
            self._stop.wait(0.0002)
        engine.background.pause(self._stop)
        if self._since_freeze >= FREEZE_ROWS and self.engine.gc.interval_s > 0:  # 0: leave the collector be
            self._since_freeze = 0
            self.engine.gc.freeze_now()  # here: nothing is in flight, nobody waits on the pause

    def _drop(self, cid: str) -> None:
        job = self._jobs.pop(cid, None)
        if job is not None:
            self._close(job)

    @staticmethod
    def _close(job: _Job) -> None:
        close = getattr(job.rows, "close", None)
        if close is not None:
            close()

    # -- figures -----------------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        now = self._monotonic()
        window = self._window
        while window and window[0][0] < now - 5.0:
            window.popleft()
        recent = list(window)
        rate = sum(n for _, n in recent) / 5.0 if recent else 0.0
        return {"sends_started_total": self.started_total, "sends_per_s": rate}
