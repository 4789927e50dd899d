"""How a shard comes back: loading its part of a snapshot, deriving what
the snapshot leaves out (timers, retention, inbox order, counts), replaying
journal records through the very handlers live traffic uses, and handing
over again the messages no provider answered before the crash.

A mixin of `ShardState` (shard.py), which owns the state these methods fill.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, Any

from .recipients import RecipientUpdate
from .sequence import (
    ACTIVE, FIRED, STEP_FAILED, WAITING, Send, SignalOutcome, cancel, delivery_result, signal, start,
)
from .state_records import restore_recipient, restore_send, restore_shape

if TYPE_CHECKING:
    from .counters import CounterBook
    from .recipients import Recipient
    from .templates import TemplateRegistry
    from .timers import TimerWheel

__all__ = ["ShardRecovery"]

_ACCEPTED = SignalOutcome.ACCEPTED


class ShardRecovery:
    if TYPE_CHECKING:  # provided by ShardState
        sends: dict[int, Send]
        recipients: dict[str, Recipient]
        templates: TemplateRegistry | None
        book: CounterBook
        campaign_rows: dict[str, bytearray]
        retain_s: float
        wheel: TimerWheel[Send]
        retained: deque[tuple[float, Send]]
        active: int
        _inbox_order: dict[str, list[int]]
        _local: deque[Any]

        def recipient(self, rid: str) -> Recipient: ...
        def _run(self, send: Send, effects: list[Any], now: float) -> None: ...
        def _fire_due(self, now: float) -> None: ...
        def _deliver(self, send: Send, i: int) -> None: ...
        def _row_started(self, origin: tuple[str, None, int]) -> None: ...

    def restore_sends(self, records: Any, shapes: dict[int, Any]) -> None:
        """Load sends of a snapshot (before the actor starts)."""
        sends, recipients = self.sends, self.recipients
        for rec in records:
            rcpt = recipients.get(rec[2]) or self.recipient(rec[2])
            send = restore_send(rec, shapes, rcpt)
            sends[send.key] = send

    def restore_shape(self, rec: Any) -> Any:
        return restore_shape(rec, self.templates, self.book)  # type: ignore[arg-type]

    def restore_recipient(self, rec: Any) -> None:
        rcpt, inbox = restore_recipient(rec)
        existing = self.recipients.get(rcpt.id)
        if existing is None:
            self.recipients[rcpt.id] = rcpt
        else:  # created first by one of its sends: fill it in place
            existing.email, existing.phone = rcpt.email, rcpt.phone
            existing.push_tokens, existing.preferences = rcpt.push_tokens, rcpt.preferences
        self._inbox_order[rcpt.id] = inbox

    def restore_counters(self, rec: Any) -> None:
        self.book.load_record(rec)

    def restore_campaign_rows(self, campaign_id: str, bits: bytes) -> None:
        """A campaign's started rows (merged: the snapshots of another layout add up)."""
        mine = self.campaign_rows.setdefault(campaign_id, bytearray())
        merged = int.from_bytes(mine, "little") | int.from_bytes(bits, "little")
        mine[:] = merged.to_bytes(max(len(mine), len(bits)), "little")

    def rebuild(self) -> None:
        """Derive timers, retention, inboxes and counts from restored sends."""
        finished = []
        self.active = 0
        for send in self.sends.values():
            if send.status == ACTIVE:
                self.active += 1
                if send.deadline is not None:
                    self.wheel.schedule(send, send.deadline)
            else:
                finished.append((send.finished + self.retain_s, send.key, send))  # type: ignore[operator]
        finished.sort(key=lambda f: (f[0], f[1]))
        self.retained = deque((expires, send) for expires, _, send in finished)
        sends = self.sends
        for rid, keys in self._inbox_order.items():
            entries = [s for s in map(sends.get, keys) if s is not None]
            self.recipients[rid].inbox = entries or None
        self._inbox_order = {}

    def replay(self, records: Any) -> None:
        """Apply journal records through the same state machine as live."""
        sends, recipients = self.sends, self.recipients
        versions = self.templates._versions  # type: ignore[union-attr]
        shape: tuple[Any, ...] = ()
        tpl: Any = None
        counters: Any = None
        send: Send | None
        effects: list[Any] | None
        for record in records:
            op = record[0]
            if op == "S":
                _, _, key, tpl_id, version, rid, fields, data, groups, origin, now, _ = record
                if shape != (tpl_id, version, groups):  # most records repeat the one before
                    shape = (tpl_id, version, groups)
                    tpl = versions.get((tpl_id, version))
                    counters = self.book.counters_of(groups, tpl) if tpl is not None else None
                if tpl is None or key in sends:
                    continue
                if origin is not None and len(origin) == 3:
                    self._row_started(origin)
                    origin = None
                rcpt = recipients.get(rid) or self.recipient(rid)
                if fields is not None:
                    RecipientUpdate.trusted(fields).merge_into(rcpt)
                send = Send(key, tpl, rcpt, data, now, counters, origin)
                sends[key] = send
                self.active += 1
                self._run(send, start(send, now), now)
            elif op == "G":
                _, _, key, i, kind, at, now = record
                send = sends.get(key)
                if send is not None:
                    outcome, effects = signal(send, i, kind, at, now)
                    if outcome == _ACCEPTED and effects:
                        self._run(send, effects, now)
            elif op == "F":
                self._fire_due(record[2])
            elif op == "D":
                _, _, key, i, ok, reason, now = record
                send = sends.get(key)
                if send is not None:
                    self._run(send, delivery_result(send, i, ok, reason, now), now)
            elif op == "X":
                _, _, key, now = record
                send = sends.get(key)
                if send is not None:
                    effects = cancel(send, now)
                    if effects:
                        self._run(send, effects, now)
            elif op == "R":
                _, _, rid, fields, replace = record
                RecipientUpdate.trusted(fields).merge_into(self.recipient(rid), replace=replace)

    def _redrive(self, _: Any, now: float) -> int:
        """After recovery: hand over again every message whose answer never
        came (at least once: providers see the same Idempotency-Key)."""
        n = 0
        for send in list(self.sends.values()):
            if send.status != ACTIVE:
                continue
            for i, step in enumerate(send.tpl.steps):
                if (step.channel != "inapp" and send.step_status(i) in (WAITING, FIRED, STEP_FAILED)
                        and not send.answers & (1 << i)):
                    self._deliver(send, i)
                    n += 1
            if self._local:
                self._run(send, [], now)
        return n
