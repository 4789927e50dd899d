"""Apply a send record to its send: the only code that changes a `Send`.

`evolve(send, record)` is what live traffic, journal replay and a standby
replica all run, so recovery cannot diverge from what happened live. It
never decides and never fails on a valid record: every choice was made in
`sequence.py` when the record was emitted. What a shard keeps beside its
sends (timers, the active count, retention, inboxes) is derived from the
send's state after the record by the shard's own `apply`.
"""

from __future__ import annotations

from typing import Any, Callable

from .records import (
    DeliveryAnswered,
    SendCancelled,
    SendFinished,
    SendOrdered,
    SendStopped,
    SignalApplied,
    StepDeferred,
    StepFailed,
    StepFired,
    StepSkipped,
    WindowEnded,
)
from .send import (
    ACTIVE,
    C_DEFERRED,
    C_ESCALATED,
    C_FAILED,
    C_SKIPPED,
    C_STOPPED,
    CANCELLED,
    DEFERRED,
    DEFERRED_KEY,
    DELIVERED_ANY,
    FAILED_AT_KEY,
    FIRED,
    FIRED_KEY,
    LATE_OPENING_S,
    OPENED_KEY,
    ORDER_KEY,
    PENDING,
    REASON_KEY,
    REQUESTED,
    RETRIES_KEY,
    SKIPPED,
    STEP_CANCELLED,
    STEP_FAILED,
    STEP_STOPPED,
    STOPPED,
    WAITING,
    Send,
)

__all__ = ["EVOLVE", "evolve"]

_FAILED = 3  # channels.FAILED: the signal kind a refusal also sets


def _count(send: Send, i: int, column: int) -> None:
    for c in send.counters:
        c.steps[i][column] += 1


def _finish(send: Send, status: int, at: float) -> None:
    send.status = status
    send.deadline = None
    send.note("finished", at)
    for c in send.counters:
        c.sends[status] += 1


def _step_fired(send: Send, rec: StepFired) -> None:
    _, i, at, _tag = rec  # one unpacking: replay runs this for every send
    tpl = send.tpl
    step = tpl.steps[i]
    waits = step.stop_rank >= 0 and tpl.sequence
    shift = 4 * i
    send.steps = (send.steps & ~(15 << shift)) | ((WAITING if waits else FIRED) << shift)
    send.current = i
    if at != send.created:  # most first steps, and every unsequenced one, fire as the send is made
        send.note(FIRED_KEY + i, at)
    for c in send.counters:
        c.steps[i][REQUESTED] += 1
    if waits:
        send.deadline = at + step.wait_s
    elif tpl.sequence or tpl.quiet is None or not _deferred_left(send):  # a broadcast's deferred steps share one timer
        send.deadline = None
    if step.channel == "inapp":  # the built-in inbox accepts at once
        send.answers |= (1 << i) | DELIVERED_ANY


def _deferred_left(send: Send) -> bool:
    return any(send.step_status(j) == DEFERRED for j in range(len(send.tpl.steps)))


def _step_skipped(send: Send, rec: StepSkipped) -> None:
    send.set_step(rec.step, SKIPPED)
    send.current = rec.step
    send.note(REASON_KEY + rec.step, rec.reason)
    _count(send, rec.step, C_SKIPPED)


def _step_deferred(send: Send, rec: StepDeferred) -> None:
    send.set_step(rec.step, DEFERRED)
    send.current = rec.step
    send.deadline = rec.until  # a timer like a window's: durable, replayed, fired by the watermark
    send.note(DEFERRED_KEY + rec.step, (rec.at, rec.until))
    _count(send, rec.step, C_DEFERRED)


def _send_ordered(send: Send, rec: SendOrdered) -> None:
    """Before any step fires: from here on the send's steps are in its own order."""
    send.tpl = send.tpl.ordered(tuple(rec.order))
    send.note(ORDER_KEY, tuple(rec.scores))


def _unfired(status: int) -> int:
    """What a step that waited becomes when the chain ends: a deferred step never fired."""
    return PENDING if status == DEFERRED else STEP_CANCELLED


def _window_ended(send: Send, rec: WindowEnded) -> None:
    send.set_step(rec.step, FIRED)
    send.deadline = None
    _count(send, rec.step, C_ESCALATED)


def _delivery_answered(send: Send, rec: DeliveryAnswered) -> None:
    i = rec.step
    send.answers |= 1 << i
    if rec.attempts > 1:
        send.note(RETRIES_KEY + i, (rec.at, rec.attempts))
    if rec.ok:
        send.answers |= DELIVERED_ANY
        if send.step_status(i) == WAITING and send.status == ACTIVE:
            # The window opens when the channel has the message: time the
            # server spent getting it there (queues, fsync) is not the
            # recipient's. (An answer after the window closed changes nothing:
            # deadlines stay absolute, and one missed while down fires at start.)
            send.deadline = rec.at + send.tpl.steps[i].wait_s
            fired = send.fired_at(i)
            if fired is not None and rec.at - fired >= LATE_OPENING_S:
                send.note(OPENED_KEY + i, rec.at)
    elif not send.sig & (1 << (4 * i + _FAILED)):
        # A refusal and a `failed` event are one failure of one message.
        send.sig |= 1 << (4 * i + _FAILED)
        _count(send, i, C_FAILED)


def _step_failed(send: Send, rec: StepFailed) -> None:
    if send.step_status(rec.step) == WAITING:
        send.deadline = None
    send.set_step(rec.step, STEP_FAILED)
    send.note(REASON_KEY + rec.step, rec.reason)
    send.note(FAILED_AT_KEY + rec.step, rec.at)


def _signal_applied(send: Send, rec: SignalApplied) -> None:
    key = 4 * rec.step + rec.kind
    send.sig |= 1 << key
    send.note(key, rec.signalled_at)
    _count(send, rec.step, rec.kind + 1)


def _send_stopped(send: Send, rec: SendStopped) -> None:
    cur = send.current
    st = send.step_status(cur)
    if cur != rec.step and st in (WAITING, DEFERRED):
        send.set_step(cur, _unfired(st))  # rule 3: what waits now stops too
    send.set_step(rec.step, STEP_STOPPED)
    send.note("stoppedBy", 4 * rec.step + rec.kind)
    _count(send, rec.step, C_STOPPED)
    _finish(send, STOPPED, rec.at)


def _send_cancelled(send: Send, rec: SendCancelled) -> None:
    for i in range(len(send.tpl.steps)):
        st = send.step_status(i)
        if st in (WAITING, DEFERRED):
            send.set_step(i, _unfired(st))
    _finish(send, CANCELLED, rec.at)


def _send_finished(send: Send, rec: SendFinished) -> None:
    _finish(send, rec.status, rec.at)


EVOLVE: dict[type, Callable[[Send, Any], None]] = {  # by record type
    StepFired: _step_fired, StepSkipped: _step_skipped, WindowEnded: _window_ended,
    DeliveryAnswered: _delivery_answered, StepFailed: _step_failed, SignalApplied: _signal_applied,
    SendStopped: _send_stopped, SendCancelled: _send_cancelled, SendFinished: _send_finished,
    StepDeferred: _step_deferred, SendOrdered: _send_ordered,
}


def evolve(send: Send, record: Any) -> None:
    """Apply one send record (not `SendStarted`, which creates the send) to `send`."""
    EVOLVE[type(record)](send, record)
