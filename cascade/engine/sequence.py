"""The send actor: every sequence rule of API.md as one pure state machine.

A `Send` is a small slotted object; the functions below are its behaviour.
Each takes the send, the message's facts and `now`, updates the send (and the
per-step counters it points at) and returns effects for the shard to carry
out. Nothing here does I/O, reads a clock or takes a lock, so the shard and
journal replay run the very same code and get the very same result.

Effects are tuples: (DELIVER, step_index), (SCHEDULE, deadline),
(UNSCHEDULE, deadline), (FINISH, None): always pairs, so the shard can unpack them.

Step indexes are 0-based inside; the API numbers steps from 1.
"""

from __future__ import annotations

from typing import Any

from .channels import FAILED
from .recipients import Recipient
from .templates import TemplateVersion

__all__ = [
    "REASON_KEY", "SNAPSHOT_MARK", "ACTIVE", "STOPPED", "COMPLETED", "CANCELLED", "FAILED_SEND", "SEND_STATUS",
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

# Bits of Send.sig: 4 signal bits per step (kind k of step i at bit 4i+k).
# Bits of Send.answers: one "channel answered" bit per step, then "some step
# was delivered"; kept apart from `sig` so both stay small cached ints. Bit 5
# belongs to the shard (which snapshot has written this send), not to the rules.
_DELIVERED_ANY = 1 << 4
SNAPSHOT_MARK = 1 << 5
REASON_KEY = 16  # notes key of step i's skip/failure reason: REASON_KEY + i
FIRED_KEY = 24  # notes key of the time step i (> 0, in a sequence) fired
_NO_EFFECTS: list[Any] = []  # shared; never appended to


class Counters:
    """Per-step counters of one group (a template, or a campaign) for one
    template version's steps, plus the group's send outcome counters."""

    __slots__ = ("group", "sends", "steps")

    def __init__(self, group: str, sends: list[int], steps: tuple[list[int], ...]) -> None:
        self.group = group
        self.sends = sends  # started, stopped, completed, cancelled, failed
        self.steps = steps


class Send:
    """One send actor. Rarely used facts live in `notes`, created on first
    use, so an active send that nothing happened to stays small: fired
    times of later steps (key 24+step), signal times (key 4*step+kind, like the
    bits of `sig`), skip/failure reasons (key 16+step), "stoppedBy" (as
    4*step+kind), "finished", "origin". Int keys spare a tuple a signal."""

    __slots__ = ("key", "tpl", "recipient", "data", "created", "status", "current", "steps",
                 "sig", "answers", "deadline", "counters", "notes")

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
        self.answers = 0
        self.deadline: float | None = None
        self.counters = counters
        self.notes: dict[Any, Any] | None = None if origin is None else {"origin": origin}

    def step_status(self, i: int) -> int:
        return (self.steps >> (4 * i)) & 15

    def _set(self, i: int, status: int) -> None:
        self.steps = (self.steps & ~(15 << (4 * i))) | (status << (4 * i))

    def has_signal(self, i: int, kind: int) -> bool:
        return bool(self.sig & (1 << (4 * i + kind)))

    def get(self, key: Any) -> Any:
        return self.notes.get(key) if self.notes is not None else None

    @property
    def finished(self) -> float | None:
        return self.get("finished")  # type: ignore[no-any-return]

    @property
    def origin(self) -> Any:
        return self.get("origin")

    def fired_at(self, i: int) -> float | None:
        if self.step_status(i) in (PENDING, SKIPPED):
            return None
        if i == 0 or not self.tpl.sequence:
            return self.created
        return self.get(FIRED_KEY + i)  # type: ignore[no-any-return]

    def note(self, key: Any, value: Any) -> None:
        if self.notes is None:
            self.notes = {}
        self.notes[key] = value


def _count(send: Send, i: int, column: int) -> None:
    for c in send.counters:
        c.steps[i][column] += 1


def _finish(send: Send, status: int, now: float, effects: list[Any]) -> None:
    send.status = status
    send.note("finished", now)
    for c in send.counters:
        c.sends[status] += 1
    effects.append((FINISH, None))


def _mark_fired(send: Send, i: int, now: float) -> None:
    """Record when a later step fired (step 1 fires at `created`)."""
    notes = send.notes
    if notes is None:
        notes = send.notes = {}
    notes[FIRED_KEY + i] = now


def _fire(send: Send, i: int, now: float, effects: list[Any]) -> bool:
    """Fire step i; False if it was skipped (no address, opted out)."""
    step = send.tpl.steps[i]
    shift = 4 * i
    reason = send.recipient.unreachable(step.channel)
    if reason is None:
        waits = step.stop_rank >= 0 and send.tpl.sequence
        send.steps = (send.steps & ~(15 << shift)) | ((WAITING if waits else FIRED) << shift)
        if i:
            _mark_fired(send, i, now)
        for c in send.counters:
            c.steps[i][REQUESTED] += 1
        if waits:
            deadline = send.deadline = now + step.wait_s
            effects.append((SCHEDULE, deadline))
        effects.append((DELIVER, i))
        return True
    send.steps = (send.steps & ~(15 << shift)) | (SKIPPED << shift)
    send.note(REASON_KEY + i, reason)
    _count(send, i, C_SKIPPED)
    return False


def _settle(send: Send, now: float, effects: list[Any]) -> None:
    """Finish once the last step has fired and every fired step has its answer."""
    answers = send.answers
    steps = send.steps
    for i in range(len(send.tpl.steps)):
        if not (answers >> i) & 1:  # cheaper first: most fired steps have answered
            st = (steps >> (4 * i)) & 15
            if st == FIRED or st == WAITING or st == STEP_FAILED:
                return
    _finish(send, COMPLETED if answers & _DELIVERED_ANY else FAILED_SEND, now, effects)


def _advance(send: Send, now: float, effects: list[Any]) -> None:
    """Fire steps from `send.current` until one waits or none are left."""
    steps = send.tpl.steps
    fired = False
    while send.current < len(steps):
        i = send.current
        fired = _fire(send, i, now, effects)
        if fired and (send.step_status(i) == WAITING):
            return
        if send.current == len(steps) - 1:
            break
        send.current += 1
    send.deadline = None
    if not fired:  # a step that just fired has its answer still to come: nothing to settle yet
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
    send.note(REASON_KEY + i, reason)
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
    bit = 1 << i
    if send.answers & bit:
        return effects
    send.answers |= bit
    if ok:
        send.answers |= _DELIVERED_ANY
    elif not send.sig & (1 << (4 * i + FAILED)):
        # A refusal and a `failed` event are one failure of one message.
        send.sig |= 1 << (4 * i + FAILED)
        _count(send, i, C_FAILED)
    if send.status != ACTIVE:
        return effects
    if not ok:
        if send.step_status(i) == WAITING:
            _escalate_now(send, i, STEP_FAILED, reason or "provider_failed", now, effects)
            return effects
        send._set(i, STEP_FAILED)
        send.note(REASON_KEY + i, reason or "provider_failed")
    if send.deadline is None and send.current == len(send.tpl.steps) - 1:
        _settle(send, now, effects)
    return effects


class SignalOutcome:
    ACCEPTED, DUPLICATE, UNKNOWN_MESSAGE, UNSUPPORTED = range(4)


def signal(send: Send, i: int, kind: int, at: float, now: float) -> tuple[int, list[Any]]:
    """An engagement (or failed) signal on step i; returns (outcome, effects)."""
    steps = send.tpl.steps
    if i < 0 or i >= len(steps):
        return SignalOutcome.UNKNOWN_MESSAGE, _NO_EFFECTS
    st = (send.steps >> (4 * i)) & 15
    if st == PENDING or st == SKIPPED:
        return SignalOutcome.UNKNOWN_MESSAGE, _NO_EFFECTS
    key = 4 * i + kind
    bit = 1 << key
    if send.sig & bit:
        return SignalOutcome.DUPLICATE, _NO_EFFECTS
    send.sig |= bit
    notes = send.notes
    if notes is None:
        notes = send.notes = {}
    notes[key] = at
    column = kind + 1
    for c in send.counters:
        c.steps[i][column] += 1
    if send.status != ACTIVE or not send.tpl.sequence:
        return SignalOutcome.ACCEPTED, _NO_EFFECTS
    if kind == FAILED:
        effects: list[Any] = []
        if i == send.current and st in (WAITING, FIRED):
            _escalate_now(send, i, STEP_FAILED, "failed_signal", now, effects)
        return SignalOutcome.ACCEPTED, effects
    rank = steps[i].stop_rank
    if rank < 0 or kind < rank:
        return SignalOutcome.ACCEPTED, _NO_EFFECTS
    cur = send.current
    if i == cur and st == WAITING:
        pass
    elif i < cur and send.step_status(cur) == WAITING:
        # Rule 3: engagement on an earlier step stops what waits now. Once
        # the terminal step has fired there is nothing left to stop.
        send._set(cur, STEP_CANCELLED)
    else:
        return SignalOutcome.ACCEPTED, _NO_EFFECTS
    effects = []
    if send.deadline is not None:
        effects.append((UNSCHEDULE, send.deadline))
        send.deadline = None
    send._set(i, STEP_STOPPED)
    notes["stoppedBy"] = key
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
