"""Loading one shard at recovery: its part of a snapshot, what the snapshot
leaves out (timers, retention, inbox order, counts), then journal records
through the shard's one apply path, and the list of messages to hand over
again once it runs.

A `ShardLoader` has the shard's state and fills it before the shard's actor
starts; it decides nothing: records are applied as they were decided live.
"""

from __future__ import annotations

import functools
from collections import deque
from typing import Any, Iterable

from ..domain.records import RecipientPut, ThrottleKept
from ..domain.send import ACTIVE, FIRED, STEP_FAILED, WAITING
from ..engine.shard import ShardState
from ..domain.recipients import Recipient
from ..engine.snapshot_records import restore_recipient, restore_sends, restore_shape

__all__ = ["ShardLoader", "kept_recipient", "owner_of"]

_HANDED = (WAITING, FIRED, STEP_FAILED)  # step states of a message handed to its channel


@functools.cache
def _handed_mask() -> list[int]:
    """Send.steps (4 bits a step, at most 4 steps) -> a bit for each step in a
    _HANDED state: one lookup a send instead of a loop over its steps."""
    nibble = [1 if n in _HANDED else 0 for n in range(16)]
    return [nibble[s & 15] | nibble[(s >> 4) & 15] << 1 | nibble[(s >> 8) & 15] << 2 | nibble[s >> 12] << 3
            for s in range(1 << 16)]


def kept_recipient(kept: Any) -> str | None:
    """The recipient a snapshot's throttle or engagement record belongs to
    (None: a template's population, which any shard may hold)."""
    if type(kept) is ThrottleKept:
        return str(kept.recipient)
    return str(kept.name) if kept.scope == "recipient" else None


def owner_of(record: Any) -> str | int:
    """What a shard record concerns: a recipient id, or a send key."""
    if type(record) is RecipientPut:
        return str(record.recipient)
    return int(record.send)


class ShardLoader:
    def __init__(self, state: ShardState) -> None:
        self.state = state
        self._inbox_order: dict[str, list[int]] = {}  # inboxes as the snapshot had them

    # -- a snapshot -----------------------------------------------------------------
    def restore_sends(self, records: Iterable[Any], shapes: dict[int, Any]) -> None:
        st = self.state
        recipients, make = st.recipients, st.recipient

        def recipient_of(rid: str) -> Recipient:
            return recipients.get(rid) or make(rid)

        restore_sends(records, shapes, recipient_of, st.sends)

    def restore_shape(self, rec: Any) -> Any:
        return restore_shape(rec, self.state.templates, self.state.book)

    def restore_recipient(self, rec: Any) -> None:
        rcpt, inbox = restore_recipient(rec)
        existing = self.state.recipients.get(rcpt.id)
        if existing is None:
            self.state.recipients[rcpt.id] = rcpt
        else:  # created first by one of its sends: fill it in place
            existing.email, existing.phone = rcpt.email, rcpt.phone
            existing.push_tokens, existing.preferences = rcpt.push_tokens, rcpt.preferences
        self._inbox_order[rcpt.id] = inbox

    def restore_counters(self, rec: Any) -> None:
        self.state.book.load_record(rec)

    def restore_kept(self, rec: Any) -> None:
        if type(rec) is ThrottleKept:
            self.state.throttle.load(rec)
        else:
            self.state.engagement.load(rec)

    def restore_campaign_rows(self, campaign_id: str, bits: bytes) -> None:
        """A campaign's started rows (merged: the snapshots of another layout add up)."""
        mine = self.state.campaign_rows.setdefault(campaign_id, bytearray())
        merged = int.from_bytes(mine, "little") | int.from_bytes(bits, "little")
        mine[:] = merged.to_bytes(max(len(mine), len(bits)), "little")

    def rebuild(self) -> None:
        """Derive timers, retention, inboxes and counts from restored sends."""
        st = self.state
        finished = []
        timed = []
        active = 0
        for send in st.sends.values():
            if send.status == ACTIVE:
                active += 1
                if send.deadline is not None:
                    timed.append((send, send.deadline))
            else:
                finished.append((send.finished + st.retain_s, send.key, send))  # type: ignore[operator]
        st.active = active
        st.wheel.schedule_many(timed)
        finished.sort(key=lambda f: (f[0], f[1]))
        st.retained = deque((expires, send) for expires, _, send in finished)
        sends = st.sends
        for rid, keys in self._inbox_order.items():
            entries = [s for s in map(sends.get, keys) if s is not None]
            st.recipients[rid].inbox = entries or None
        self._inbox_order = {}

    # -- the journal ------------------------------------------------------------------
    def replay(self, records: Iterable[Any]) -> None:
        """Apply decoded shard records, in order."""
        apply = self.state.apply
        for rec in records:
            apply(rec)

    def finish(self) -> None:
        """Note the messages handed to a provider whose answer never came:
        the shard hands them over again once it runs (`redrive`)."""
        unanswered = []
        handed_mask = _handed_mask()
        for send in self.state.sends.values():
            # An in-app step is answered when it fires: only provider steps can be left.
            left = handed_mask[send.steps] & ~send.answers if send.status == ACTIVE else 0
            while left:
                i = (left & -left).bit_length() - 1
                unanswered.append((send.key, i))
                left &= left - 1
        self.state.unanswered = unanswered
