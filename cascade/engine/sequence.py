"""The send actor: every sequence rule of API.md as one pure state machine.

A `Send` is a small slotted object; the functions below are its behaviour.
Each takes the send, the message's facts and `now`, updates the send (and the
per-step counters it points at) and returns effects for the shard to carry
out. Nothing here does I/O, reads a clock or takes a lock, so the shard and
journal replay run the very same code and get the very same result.

Effects are tuples: (DELIVER, step_index), (SCHEDULE, deadline),
(UNSCHEDULE, deadline), (FINISH,).

Step indexes are 0-based inside; the API numbers steps from 1.
"""

from __future__ import annotations

from typing import Any

from .channels import FAILED
from .recipients import Recipient
from .templates import TemplateVersion

__all__ = [
    "ACTIVE", "STOPPED", "COMPLETED", "CANCELLED", "FAILED_SEND", "SEND_STATUS",
    "PENDING", "WAITING", "FIRED", "STEP_STOPPED", "SKIPPED", "STEP_FAILED", "STEP_CANCELLED", "STEP_STATUS",
    "DELIVER", "SCHEDULE", "UNSCHEDULE", "FINISH",
    "Counters", "Send", "SignalOutcome",
    "start", "signal", "window_ended", "delivery_result", "cancel",
]

# Send status
ACTIVE, STOPPED, COMPLETED, CANCELLED, FAILED_SEND = range(5)
SEND_STATUS = ("active", "stopped", "completed", "cancelled", "failed")

# Step status, 4 bits each in Send.steps
PENDING, WAITING, FIRED, STEP_STOPPED, SKIPPED, STEP_FAILED, STEP_CANCELLED = range(7)
STEP_STATUS = ("pending", "waiting", "fired", "stopped", "skipped", "failed", "cancelled")

# Effects
DELIVER, SCHEDULE, UNSCHEDULE, FINISH = range(4)

# Columns of a step counter row; a signal of kind k counts in column k + 1.
REQUESTED, C_DELIVERED, C_VIEWED, C_CLICKED, C_FAILED, C_SKIPPED, C_STOPPED, C_ESCALATED = range(8)
STEP_COLUMNS = ("requested", "delivered", "viewed", "clicked", "failed", "skipped", "stopped", "escalated")
# Columns of a send counter row
S_STARTED = 0

# Bits of Send.sig: 4 signal bits per step (kind k of step i at bit 4i+k),
# then one "provider answered" bit per step, then "some step was delivered".
_RESULT_BIT = 16
_DELIVERED_ANY = 1 << 20


class Counters:
    """Per-step counters of one group (a template, or a campaign) for one
    template version's steps, plus the group's send outcome counters."""

    __slots__ = ("sends", "steps")

    def __init__(self, sends: list[int], steps: tuple[list[int], ...]) -> None:
        self.sends = sends  # started, stopped, completed, cancelled, failed
        self.steps = steps


class Send:
    __slots__ = ("key", "tpl", "recipient", "data", "created", "status", "current", "steps",
                 "sig", "deadline", "finished", "counters", "fired", "notes", "origin")

    def __init__(self, key: int, tpl: TemplateVersion, recipient: Recipient, data: bytes | None,
                 created: float, counters: tuple[Counters, ...], origin: Any = None) -> None:
        self.key = key
        self.tpl = tpl
        self.recipient = recipient
        self.data = data  # msgpack bytes: about 8x smaller than the dicts
        self.created = created
        self.status = ACTIVE
        self.current = 0
        self.steps = 0
        self.sig = 0
        self.deadline: float | None = None
        self.finished: float | None = None
        self.counters = counters
        self.fired: list[float | None] | None = None  # only once a later step fires
        self.notes: dict[Any, Any] | None = None  # reasons, signal times, stoppedBy
        self.origin = origin  # (campaign id, idempotency key) or None

    def step_status(self, i: int) -> int:
        return (self.steps >> (4 * i)) & 15

    def _set(self, i: int, status: int) -> None:
        self.steps = (self.steps & ~(15 << (4 * i))) | (status << (4 * i))

    def has_signal(self, i: int, kind: int) -> bool:
        return bool(self.sig & (1 << (4 * i + kind)))

    def fired_at(self, i: int) -> float | None:
        if self.fired is not None:
            return self.fired[i]
        if i == 0 or not self.tpl.sequence:
            return self.created if self.step_status(i) not in (PENDING, SKIPPED) else None
        return None

    def note(self, key: Any, value: Any) -> None:
        if self.notes is None:
            self.notes = {}
        self.notes[key] = value


def _count(send: Send, i: int, column: int) -> None:
    for c in send.counters:
        c.steps[i][column] += 1


def _finish(send: Send, status: int, now: float, effects: list[Any]) -> None:
    send.status = status
    send.finished = now
    for c in send.counters:
        c.sends[status] += 1
    effects.append((FINISH,))


def _mark_fired(send: Send, i: int, now: float) -> None:
    if i == 0 and send.fired is None:
        return
    if send.fired is None:
        send.fired = [None] * len(send.tpl.steps)
        send.fired[0] = send.created if send.step_status(0) not in (PENDING, SKIPPED) else None
    send.fired[i] = now


def _fire(send: Send, i: int, now: float, effects: list[Any]) -> bool:
    """Fire step i; False if it was skipped (no address, opted out)."""
    step = send.tpl.steps[i]
    rcpt = send.recipient
    if not rcpt.address(step.address_field):
        reason = "no_address"
    elif rcpt.opted_out(step.channel):
        reason = "opted_out"
    else:
        waits = send.tpl.sequence and step.stop_rank >= 0
        send._set(i, WAITING if waits else FIRED)
        _mark_fired(send, i, now)
        _count(send, i, REQUESTED)
        if waits:
            send.deadline = now + step.wait_s
            effects.append((SCHEDULE, send.deadline))
        effects.append((DELIVER, i))
        return True
    send._set(i, SKIPPED)
    send.note(i, reason)
    _count(send, i, C_SKIPPED)
    return False


def _settle(send: Send, now: float, effects: list[Any]) -> None:
    """Finish once the last step has fired and every fired step has its answer."""
    sig = send.sig
    for i in range(len(send.tpl.steps)):
        st = (send.steps >> (4 * i)) & 15
        if st in (WAITING, FIRED, STEP_FAILED) and not sig & (1 << (_RESULT_BIT + i)):
            return
    _finish(send, COMPLETED if sig & _DELIVERED_ANY else FAILED_SEND, now, effects)


def _advance(send: Send, now: float, effects: list[Any]) -> None:
    """Fire steps from `send.current` until one waits or none are left."""
    steps = send.tpl.steps
    while send.current < len(steps):
        i = send.current
        if _fire(send, i, now, effects) and (send.step_status(i) == WAITING):
            return
        if send.current == len(steps) - 1:
            break
        send.current += 1
    send.deadline = None
    _settle(send, now, effects)


def start(send: Send, now: float) -> list[Any]:
    effects: list[Any] = []
    for c in send.counters:
        c.sends[S_STARTED] += 1
    if send.tpl.sequence:
        _advance(send, now, effects)
    else:
        for i in range(len(send.tpl.steps)):
            _fire(send, i, now, effects)
        send.current = len(send.tpl.steps) - 1
        _settle(send, now, effects)
    return effects


def window_ended(send: Send, now: float) -> list[Any]:
    effects: list[Any] = []
    i = send.current
    if send.status != ACTIVE or send.step_status(i) != WAITING or send.deadline is None or send.deadline > now:
        return effects
    send._set(i, FIRED)
    _count(send, i, C_ESCALATED)
    send.current = i + 1
    _advance(send, now, effects)
    return effects


def _escalate_now(send: Send, i: int, status: int, reason: str, now: float, effects: list[Any]) -> None:
    """Rule 5: a step that cannot be delivered does not wait its window."""
    send._set(i, status)
    send.note(i, reason)
    if send.deadline is not None:
        effects.append((UNSCHEDULE, send.deadline))
        send.deadline = None
    if i < len(send.tpl.steps) - 1 and send.tpl.sequence:
        send.current = i + 1
        _advance(send, now, effects)
    else:
        _settle(send, now, effects)


def delivery_result(send: Send, i: int, ok: bool, reason: str | None, now: float) -> list[Any]:
    """The channel's answer for step i: accepted (requested) or refused (failed)."""
    effects: list[Any] = []
    bit = 1 << (_RESULT_BIT + i)
    if send.sig & bit:
        return effects
    send.sig |= bit
    if ok:
        send.sig |= _DELIVERED_ANY
    else:
        _count(send, i, C_FAILED)
    if send.status != ACTIVE:
        return effects
    if not ok:
        if send.step_status(i) == WAITING:
            _escalate_now(send, i, STEP_FAILED, reason or "provider_failed", now, effects)
            return effects
        send._set(i, STEP_FAILED)
        send.note(i, reason or "provider_failed")
    if send.deadline is None and send.current == len(send.tpl.steps) - 1:
        _settle(send, now, effects)
    return effects


class SignalOutcome:
    ACCEPTED, DUPLICATE, UNKNOWN_MESSAGE, UNSUPPORTED = range(4)


def signal(send: Send, i: int, kind: int, at: float, now: float) -> tuple[int, list[Any]]:
    """An engagement (or failed) signal on step i; returns (outcome, effects)."""
    effects: list[Any] = []
    steps = send.tpl.steps
    if i < 0 or i >= len(steps):
        return SignalOutcome.UNKNOWN_MESSAGE, effects
    st = send.step_status(i)
    if st in (PENDING, SKIPPED):
        return SignalOutcome.UNKNOWN_MESSAGE, effects
    bit = 1 << (4 * i + kind)
    if send.sig & bit:
        return SignalOutcome.DUPLICATE, effects
    send.sig |= bit
    send.note((i, kind), at)
    _count(send, i, kind + 1)
    if send.status != ACTIVE or not send.tpl.sequence:
        return SignalOutcome.ACCEPTED, effects
    if kind == FAILED:
        if i == send.current and st in (WAITING, FIRED):
            _escalate_now(send, i, STEP_FAILED, "failed_signal", now, effects)
        return SignalOutcome.ACCEPTED, effects
    rank = steps[i].stop_rank
    if rank < 0 or kind < rank:
        return SignalOutcome.ACCEPTED, effects
    cur = send.current
    cur_status = send.step_status(cur)
    if i == cur and st == WAITING:
        pass
    elif i < cur and cur_status == WAITING:
        # Rule 3: engagement on an earlier step stops what waits now. Once
        # the terminal step has fired there is nothing left to stop.
        send._set(cur, STEP_CANCELLED)
    else:
        return SignalOutcome.ACCEPTED, effects
    if send.deadline is not None:
        effects.append((UNSCHEDULE, send.deadline))
        send.deadline = None
    send._set(i, STEP_STOPPED)
    send.note("stoppedBy", (i, kind))
    _count(send, i, C_STOPPED)
    _finish(send, STOPPED, now, effects)
    return SignalOutcome.ACCEPTED, effects


def cancel(send: Send, now: float) -> list[Any] | None:
    """None when the send has already finished (the caller answers 409)."""
    if send.status != ACTIVE:
        return None
    effects: list[Any] = []
    for i in range(len(send.tpl.steps)):
        if send.step_status(i) == WAITING:
            send._set(i, STEP_CANCELLED)
    if send.deadline is not None:
        effects.append((UNSCHEDULE, send.deadline))
        send.deadline = None
    _finish(send, CANCELLED, now, effects)
    return effects
