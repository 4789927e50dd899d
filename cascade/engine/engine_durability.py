"""What the engine offers durability and time: the front door's state as
snapshot records and back, where a journal record belongs, taking the
shards' snapshots, re-delivery after recovery, and moving a manual clock
through every deadline in order.

A mixin of `Engine` (supervisor.py), which owns the state these methods use.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any, Callable

from ..domain.records import ClockMoved, IdempotencyKept, TemplateDeleted, TemplatePut
from .campaigns import CAMPAIGN_RECORDS
from .clock import ManualClock
from .errors import InvalidInput, NotFound
from .ids import slot_of_key
from .reply import Reply
from .state_records import template_record

if TYPE_CHECKING:
    from .campaigns import CampaignBook
    from .clock import Clock
    from .fanout import Fanout
    from .idempotency import IdempotencyKeys
    from .shard import Command, ShardState
    from .templates import TemplateRegistry

__all__ = ["EngineDurability"]


class EngineDurability:
    if TYPE_CHECKING:  # provided by Engine
        clock: Clock
        templates: TemplateRegistry
        idempotency: IdempotencyKeys
        campaigns: CampaignBook
        fanout: Fanout
        journal: Any
        states: list[ShardState]
        _advance_lock: threading.Lock
        _count_lock: threading.Lock
        _submitted: list[int]

        def shard_of_slot(self, slot: int) -> int: ...
        def _recipient_shard(self, rid: str) -> int: ...
        def _ask(self, i: int, op: str, payload: Any) -> Reply: ...
        def _ask_all(self, op: str, payload: Any, combine: Callable[[list[Any]], Any]) -> Reply: ...
        def _check_open(self) -> None: ...
        def _tell(self, i: int, commands: list[Command]) -> None: ...

    # -- durability: what the snapshot coordinator and recovery call ---------------
    def front_records(self) -> list[Any]:
        """The front door's state: every template version, deletions,
        idempotency keys, campaigns and the clock."""
        versions = sorted(self.templates.all_versions(), key=lambda tv: (tv.id, tv.version))
        records: list[Any] = [template_record(tv) for tv in versions]
        current = {tv.id for tv in self.templates.all()}
        records += [TemplateDeleted(tid) for tid in sorted({tv.id for tv in versions} - current)]
        now = self.clock.now()
        records += [IdempotencyKept(c.key, c.digest, c.send_key, c.expires) for c in self.idempotency.live(now)]
        records += self.campaigns.front_records()
        records.append(ClockMoved(now))
        return records

    def apply_front(self, record: Any) -> None:
        kind = type(record)
        if kind is TemplatePut:
            self.templates.restore(record.template, record.version, dict(record.body), record.created,
                                   record.updated)
        elif kind is TemplateDeleted:
            try:
                self.templates.delete(record.template)
            except NotFound:
                pass
        elif kind is IdempotencyKept:
            self.idempotency.restore(record.key, record.digest, record.send, record.expires)
        elif kind in CAMPAIGN_RECORDS:
            self.campaigns.apply(record)
        # ClockMoved is recovery's business: it resumes at the latest time seen.

    def shard_of_key(self, key: int) -> int:
        return self.shard_of_slot(slot_of_key(key))

    def shard_of_recipient(self, rid: str) -> int:
        return self._recipient_shard(rid)

    def snapshot_shards(self, directory: str, set_position: int, write: Callable[..., Any],
                        pack: Callable[[Any], Any]) -> list[Any]:
        """Write every shard's snapshot in slices (blocking; call from a thread).
        One shard slices at a time: shards share one interpreter lock, so
        slicing them all at once would stall them all at once."""
        snaps = [self._ask(i, "snapshot_begin", (directory, set_position, i + 1, write, pack)).wait(None)
                 for i in range(len(self.states))]
        pending = list(range(len(self.states)))
        while pending:
            pending = [i for i in pending if not self._ask(i, "snapshot_slice", None).wait(None)]
        return snaps

    def redrive(self) -> Reply:
        """After recovery: hand over again what no provider answered."""
        return self._ask_all("redrive", None, sum)

    # -- manual time ----------------------------------------------------------------
    def advance(self, seconds: float) -> float:
        """Move a manual clock forward, firing every timer that falls due in
        deadline order across shards, before returning the new time. Blocking:
        call it from a thread, not from an event loop."""
        clock = self.clock
        if not isinstance(clock, ManualClock):
            raise InvalidInput("the clock is not manual", [("clock.mode", "advance needs clock.mode = \"manual\"")])
        if seconds < 0:
            raise InvalidInput("time can't go backwards", [("$.advanceSeconds", "must be >= 0")])
        self._check_open()
        with self._advance_lock:
            target = clock.now() + seconds
            t = clock.now()
            while True:
                # A campaign due by t starts (and fans out whole) at t, before time moves on.
                self.campaigns.settle(t, lambda: self.fanout.alive)
                nexts = self._fire_all(t) + [self.campaigns.next_start()]
                due = [d for d in nexts if d is not None and d <= target]
                if not due:
                    break
                t = max(t, min(due))
                clock.set(t)
            clock.set(target)
            self.campaigns.settle(target, lambda: self.fanout.alive)
            self._fire_all(target)
            if self.journal is not None:
                done = threading.Event()
                self.journal.append([ClockMoved(target)], done.set)
                done.wait()
            return target

    def _fire_all(self, until: float) -> list[float | None]:
        replies = []
        for i in range(len(self.states)):
            reply = Reply()
            with self._count_lock:
                self._submitted[i] += 1
            self._tell(i, [("fire", until, reply)])
            replies.append(reply)
        return [r.wait(None) for r in replies]
