"""Campaigns: one template version sent to many recipients, now or at a time.

Owns the campaign records and their lifecycle; the fan-out thread
(`fanout.py`) turns rows into sends. Invariants:

- a campaign is `scheduled` until the clock reaches `scheduledAt`, then
  `running` until every row has started (`completed`) or it is cancelled;
  `running` is derived (from the clock), the two ends are journaled;
- the campaign record (`CampaignCreated`) is appended to the journal before the campaign
  is visible to the fan-out, so every send record of a campaign comes after
  its campaign record; the answer waits until that record is durable;
- a cancel first stops the fan-out (status, under the lock the fan-out
  submits under, so no chunk slips past it), then has every shard cancel
  the campaign's active sends, and only then journals `CampaignEnded`: a durable
  cancel never leaves a send of the campaign active after recovery.

Journal/snapshot records (front, in domain/records.py): `CampaignCreated`
and `CampaignEnded` (completed | cancelled). `rows` is the rows file's name under the campaign directory, or the rows'
frames inline when the engine has no directory (see campaign_rows.py).
Which rows have started lives with the shards (see shard.py).
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Any, Callable, Iterable, Protocol

from ..domain.errors import AlreadyFinished, NotFound, Overloaded
from ..domain.records import CampaignCreated, CampaignEnded
from ..domain.timefmt import iso
from ..engine.reply import Reply, resolve_batch
from ..domain.templates import TemplateVersion
from ..engine.views import metrics_view
from .host import CampaignHost
from .rows import RowsWriter, Upload


class _FanoutHandle(Protocol):
    """What the book asks of the fan-out (fanout.py): wake it, read its figures."""

    def wake(self) -> None: ...

    def stats(self) -> dict[str, Any]: ...


class RowsStore(Protocol):
    """Where rows files live besides this process's disk (a cluster's object store, so the next owner
    of a partition finds them): `fetch` copies one into `directory` (blocking), `drop` deletes it
    (without waiting: it may be called from any thread)."""

    def fetch(self, name: str, directory: str) -> None: ...

    def drop(self, name: str) -> None: ...


__all__ = ["CAMPAIGN_RECORDS", "Campaign", "CampaignBook", "RowsStore", "SCHEDULED", "RUNNING", "COMPLETED",
           "CANCELLED", "STATUSES", "campaign_view"]

_log = logging.getLogger("cascade.campaigns")
SCHEDULED, RUNNING, COMPLETED, CANCELLED = "scheduled", "running", "completed", "cancelled"
STATUSES = (SCHEDULED, RUNNING, COMPLETED, CANCELLED)
CAMPAIGN_RECORDS = (CampaignCreated, CampaignEnded)


class Campaign:
    __slots__ = ("id", "template", "version", "name", "scheduled_at", "created_at", "rows", "n_rows", "rejected",
                 "data", "status", "finished_at", "started", "recovered", "problem", "seq")

    def __init__(self, cid: str, template: str, version: int, name: str | None, scheduled_at: float,
                 created_at: float, rows: str | bytes, n_rows: int, rejected: int, data: bytes | None) -> None:
        self.id, self.template, self.version, self.name = cid, template, version, name
        self.scheduled_at, self.created_at = scheduled_at, created_at
        self.rows, self.n_rows, self.rejected, self.data = rows, n_rows, rejected, data
        self.status = SCHEDULED
        self.finished_at: float | None = None
        self.started = 0  # rows known started (fan-out progress; the counters are the authority)
        self.recovered = False  # loaded at recovery: some rows may have started before
        self.problem: str | None = None  # why the fan-out cannot go on (rows file lost)
        self.seq = 0  # creation order

    @property
    def group(self) -> str:
        return f"c:{self.id}"

    def record(self) -> CampaignCreated:
        return CampaignCreated(self.id, self.template, self.version, self.name, self.scheduled_at, self.created_at,
                self.rows, self.n_rows, self.rejected, self.data)


def campaign_view(c: Campaign, tpl: TemplateVersion | None, totals: Any = None, metrics: bool = True) -> dict[str, Any]:
    """The API view of `c` (of template version `tpl`); `totals` are the group totals of `c.group`."""
    block = metrics_view(c.template, tpl, totals)
    view: dict[str, Any] = {
        "id": c.id, "name": c.name, "status": c.status, "template": c.template, "templateVersion": c.version,
        "scheduledAt": iso(c.scheduled_at), "createdAt": iso(c.created_at), "finishedAt": iso(c.finished_at),
        "recipients": c.n_rows, "sendsStarted": block["sends"]["started"], "rejectedRows": c.rejected,
    }
    if metrics:
        view["metrics"] = block
    if c.problem is not None:
        view["problem"] = c.problem
    return view


class _Then:
    """A reply stand-in whose completion runs `fn(value, error)` on the thread that completed it."""

    __slots__ = ("_loop", "_value", "_error", "_fn")

    def __init__(self, fn: Callable[[Any, BaseException | None], None]) -> None:
        self._loop = None
        self._value: Any = None
        self._error: BaseException | None = None
        self._fn = fn

    def set(self, value: Any) -> None:
        self._value = value

    def set_error(self, error: BaseException) -> None:
        self._error = error

    def _wake(self) -> None:
        self._fn(self._value, self._error)


class CampaignBook:
    def __init__(self, engine: CampaignHost, directory: str | None, rows_store: RowsStore | None = None) -> None:
        self.engine = engine
        self.rows_store = rows_store
        self.fanout: _FanoutHandle | None = None  # set by Campaigns: the book wakes it
        self.directory = directory
        self.cond = threading.Condition()  # guards the campaigns; the fan-out submits under it
        self._by_id: dict[str, Campaign] = {}
        self._seq = 0

    # -- creating ------------------------------------------------------------------
    def new_upload(self) -> Upload[str | bytes]:
        """A campaign's rows on their way in (503 while the engine cannot take one)."""
        self.engine.check_open()
        cid = "cmp_" + os.urandom(8).hex()
        return Upload(cid, RowsWriter(self.directory, cid))

    def create(self, upload: Upload[str | bytes], rows: str | bytes, template: str, scheduled_at: float | None,
               name: str | None, data: bytes | None) -> Reply:
        """Register the campaign of a finished upload; the reply (the Campaign)
        comes once its record is durable. NotFound if the template is gone."""
        engine = self.engine
        try:
            engine.check_open()
            tpl = engine.templates.get(template)  # the version is fixed here
        except Exception:
            self._discard(rows)
            raise
        now = engine.clock.now()
        return self._register(Campaign(upload.id, tpl.id, tpl.version, name,
                                       now if scheduled_at is None else scheduled_at, now, rows, upload.accepted,
                                       upload.rejected, data))

    def create_part(self, c: Campaign) -> Reply:
        """Register `c` as given, once (a cluster's part of a campaign: its rows in this partition, the
        template version fixed where the campaign was created); a campaign already here is answered
        as it is, so a creation retried after a lost answer makes nothing twice."""
        self.engine.check_open()
        with self.cond:  # held from the look to the append: two tries of one creation make one record
            found = self._by_id.get(c.id)
            if found is None:
                return self._register(c)
        reply = Reply.here()
        reply.set(found)
        if self.engine.journal is None:
            resolve_batch([reply])
        else:  # answered once everything appended so far (the first try's record too) is durable
            self.engine.journal.append([], lambda: resolve_batch([reply]))
        return reply

    def _register(self, c: Campaign) -> Reply:
        engine = self.engine
        if c.scheduled_at <= engine.clock.now():
            c.status = RUNNING
        reply = Reply.here()
        reply.set(c)
        if engine.journal is None:
            resolve_batch([reply])
        else:
            engine.journal.append([c.record()], lambda: resolve_batch([reply]))
        with self.cond:  # re-entrant: create_part holds it already
            self._add(c)
        self._wake_fanout()
        return reply

    def _add(self, c: Campaign) -> None:
        self._seq += 1
        c.seq = self._seq
        self._by_id[c.id] = c

    # -- reading -------------------------------------------------------------------
    def get(self, cid: str) -> Campaign:
        c = self._by_id.get(cid)
        if c is None:
            raise NotFound(f"campaign {cid!r} does not exist")
        return c

    def newest_first(self, status: str | None = None) -> list[Campaign]:
        """Campaigns (of one status, if given), newest first."""
        with self.cond:
            found = [c for c in self._by_id.values() if status is None or c.status == status]
        return sorted(found, key=lambda c: (c.created_at, c.seq), reverse=True)

    def view(self, c: Campaign, totals: Any = None, metrics: bool = True) -> dict[str, Any]:
        """The API view; `totals` are the group totals of `c.group` (engine.totals)."""
        return campaign_view(c, self.engine.templates.version(c.template, c.version), totals, metrics)

    # -- lifecycle -----------------------------------------------------------------
    def promote_due(self, now: float) -> None:
        with self.cond:
            for c in self._by_id.values():
                if c.status == SCHEDULED and c.scheduled_at <= now:
                    c.status = RUNNING

    def running(self) -> list[Campaign]:
        with self.cond:
            return sorted((c for c in self._by_id.values() if c.status == RUNNING and c.problem is None),
                          key=lambda c: c.seq)

    def next_start(self) -> float | None:
        with self.cond:
            return min((c.scheduled_at for c in self._by_id.values() if c.status == SCHEDULED), default=None)

    def cancel(self, cid: str) -> Reply:
        """Stop the fan-out and cancel the campaign's active sends; the reply
        (the Campaign) comes once the cancel is durable."""
        engine = self.engine
        engine.check_open()
        final = Reply.here()
        with self.cond:
            c = self.get(cid)
            if c.status == CANCELLED:
                raise AlreadyFinished(f"campaign {cid} has already been cancelled")
            at = engine.clock.now()
            record = CampaignEnded(c.id, CANCELLED, at)

            def then(_: Any, error: BaseException | None) -> None:
                if error is not None:
                    final.set_error(error)
                    resolve_batch([final])
                    return
                final.set(c)
                self._finish(c, record, lambda: resolve_batch([final]))

            # Inside the lock, so ordered after every chunk the fan-out has
            # submitted; first, so a refusal (overloaded) changes nothing.
            engine.ask_shards("cancel_campaign", c.group, lambda parts: sum(parts), _Then(then))
            c.status, c.finished_at = CANCELLED, at
            self.cond.notify_all()
        return final

    def complete(self, c: Campaign) -> None:
        """Every row has started (called by the fan-out)."""
        with self.cond:
            if c.status != RUNNING:
                return
            c.status, c.finished_at = COMPLETED, self.engine.clock.now()
            self.cond.notify_all()
        self._finish(c, CampaignEnded(c.id, COMPLETED, c.finished_at), None)
        self.prune_started_rows()

    def _finish(self, c: Campaign, record: CampaignEnded, done: Callable[[], None] | None) -> None:
        """Journal the end; once durable, the rows are no longer needed."""

        def durable() -> None:
            self._discard(c.rows)
            if done is not None:
                done()

        if self.engine.journal is None:
            durable()
        else:
            self.engine.journal.append([record], durable)

    def _discard(self, rows: str | bytes) -> None:
        if isinstance(rows, str) and self.directory is not None:
            try:
                os.unlink(os.path.join(self.directory, rows))
            except FileNotFoundError:
                pass
            if self.rows_store is not None:
                self.rows_store.drop(rows)

    def local_rows(self, c: Campaign) -> None:
        """Make sure `c`'s rows file is on this disk: fetched from the rows store when this process did
        not write it (a cluster partition taken over from another node). Raises what the fetch raises."""
        if (isinstance(c.rows, str) and self.directory is not None and self.rows_store is not None
                and not os.path.exists(os.path.join(self.directory, c.rows))):
            os.makedirs(self.directory, exist_ok=True)
            self.rows_store.fetch(c.rows, self.directory)

    def prune_started_rows(self) -> None:
        """Shards drop the started-rows bitmaps of campaigns that will start nothing more."""
        with self.cond:
            if not self._by_id:
                return
            live = {c.id for c in self._by_id.values() if c.status in (SCHEDULED, RUNNING)}
        try:
            self.engine.ask_shards("keep_campaign_rows", live, lambda parts: None)
        except Overloaded:
            pass  # only memory: the next campaign to end tries again

    def settle(self, now: float, alive: Callable[[], bool]) -> None:
        """Manual clock: start what is due by `now` and wait until no campaign
        is fanning out, so time does not move while one does."""
        self.promote_due(now)
        self._wake_fanout()
        with self.cond:
            while alive() and any(c.status == RUNNING and c.problem is None for c in self._by_id.values()):
                self.cond.wait(0.1)

    # -- durability ------------------------------------------------------------------
    def front_records(self) -> list[tuple[Any, ...]]:
        with self.cond:
            ordered = sorted(self._by_id.values(), key=lambda c: c.seq)
            out: list[Any] = []
            for c in ordered:
                out.append(c.record())
                if c.status in (COMPLETED, CANCELLED):
                    out.append(CampaignEnded(c.id, c.status, c.finished_at or c.created_at))
            return out

    def apply(self, record: CampaignCreated | CampaignEnded) -> None:
        if isinstance(record, CampaignCreated):
            with self.cond:
                if record.campaign not in self._by_id:
                    c = Campaign(record.campaign, record.template, record.version, record.name, record.scheduled_at,
                                 record.created_at, record.rows, record.n_rows, record.rejected, record.data)
                    c.recovered = True
                    self._add(c)
        else:
            with self.cond:
                found = self._by_id.get(record.campaign)
                if found is not None:
                    found.status, found.finished_at = record.status, record.at

    def orphan_files(self) -> Iterable[str]:
        """Rows files no campaign still needs (a crash between upload and record, or after the end)."""
        if self.directory is None or not os.path.isdir(self.directory):
            return []
        with self.cond:
            needed = {c.rows for c in self._by_id.values() if c.status in (SCHEDULED, RUNNING)}
        return [n for n in os.listdir(self.directory) if n not in needed and n.startswith("cmp_")]

    def remove_orphans(self) -> None:
        for name in self.orphan_files():
            _log.info("removing campaign rows file %s, which no campaign needs", name)
            try:
                os.unlink(os.path.join(self.directory or ".", name))
            except OSError:
                pass

    # -- figures for /metrics -----------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        with self.cond:
            by_status = dict.fromkeys(STATUSES, 0)
            progress = []
            for c in self._by_id.values():
                by_status[c.status] = by_status.get(c.status, 0) + 1
                if c.status == RUNNING:
                    progress.append((c.id, c.n_rows, c.started))
        return {"by_status": by_status, "running": progress, **(self.fanout.stats() if self.fanout else {})}

    def _wake_fanout(self) -> None:
        if self.fanout is not None:
            self.fanout.wake()
