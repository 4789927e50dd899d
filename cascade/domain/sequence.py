"""Every sequence rule of API.md, as decisions: given a send and what just
happened, which records follow.

Each function reads the send and calls `emit(record)` for every state
change it decides on; `emit` applies the record at once (the shard's one
apply path: `evolve` plus what the shard derives), so the next decision
sees the state the last one made. Nothing here changes a send itself, does
I/O, reads a clock or takes a lock: the shard passes `now`.
"""

from __future__ import annotations

from typing import Any, Callable

from .records import (
    DeliveryAnswered,
    SendCancelled,
    SendFinished,
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
    COMPLETED,
    DEFERRED,
    DELIVERED_ANY,
    FAILED_SEND,
    FIRED,
    PENDING,
    SKIPPED,
    STEP_FAILED,
    THROTTLED,
    WAITING,
    Send,
)

__all__ = ["Emit", "SignalOutcome", "cancel", "closed_before", "delivery_result", "signal", "start", "timer_due"]

Emit = Callable[[Any], None]
_FAILED = 3  # channels.FAILED


class SignalOutcome:
    ACCEPTED, DUPLICATE, UNKNOWN_MESSAGE, UNSUPPORTED = range(4)
    NAMES = ("accepted", "duplicate", "unknown_message", "unsupported_signal")  # API item codes and metric labels


def _fire(send: Send, i: int, now: float, emit: Emit, quiet: bool = True) -> bool:
    """Fire step i, or defer it past the recipient's quiet hours (rule 12);
    False if it was skipped (no address, opted out)."""
    channel = send.tpl.steps[i].channel
    reason = send.recipient.unreachable(channel)
    if reason is not None:
        emit(StepSkipped(send.key, i, reason, now))
        return False
    hours = send.tpl.quiet
    if quiet and hours is not None and channel in hours.channels:
        until = hours.until(now, send.recipient.timezone)
        if until is not None:
            emit(StepDeferred(send.key, i, until, now))
            return True
    emit(StepFired(send.key, i, now))
    return True


def _settle(send: Send, now: float, emit: Emit) -> None:
    """Finish once the last step has fired and every fired step has its answer (rule 6)."""
    answers = send.answers
    steps = send.steps
    for i in range(len(send.tpl.steps)):
        if not (answers >> i) & 1:  # cheaper first: most fired steps have answered
            st = (steps >> (4 * i)) & 15
            if st == FIRED or st == WAITING or st == STEP_FAILED or st == DEFERRED:
                return
    emit(SendFinished(send.key, COMPLETED if answers & DELIVERED_ANY else FAILED_SEND, now))


def _advance(send: Send, first: int, now: float, emit: Emit) -> None:
    """Fire steps from `first` until one waits or none are left (rules 4, 5)."""
    for i in range(first, len(send.tpl.steps)):
        if _fire(send, i, now, emit) and send.deadline is not None:
            return
    _settle(send, now, emit)


def _escalate_now(send: Send, i: int, reason: str, now: float, emit: Emit) -> None:
    """Rule 5: a step that cannot be delivered does not wait its window."""
    emit(StepFailed(send.key, i, reason, now))
    if i < len(send.tpl.steps) - 1 and send.tpl.sequence:
        _advance(send, i + 1, now, emit)
    else:
        _settle(send, now, emit)


def start(send: Send, now: float, emit: Emit, throttled: bool = False) -> None:
    """Step 1 fires at once; without a sequence every step does. A send over
    its template's throttle for this recipient fires nothing (rule 13)."""
    if throttled:
        emit(SendFinished(send.key, THROTTLED, now))
        return
    if send.tpl.sequence:
        _advance(send, 0, now, emit)
        return
    for i in range(len(send.tpl.steps)):
        _fire(send, i, now, emit)
    _settle(send, now, emit)


def timer_due(send: Send, now: float, emit: Emit) -> None:
    """The send's timer has come: the waiting step's window ends (rule 4),
    or the quiet hours a step was deferred past are over (rule 12)."""
    i = send.current
    if send.status != ACTIVE or send.deadline is None or send.deadline > now:
        return
    st = send.step_status(i)
    if st == WAITING:
        if not send.answered(i):
            # The window opens when the channel has the message, and its answer moves the
            # deadline there. Until then the message waits in our own delivery queue or at its
            # provider, whose answer (accepted, or refused after its retries and timeouts) comes
            # in any case. Ending the window now let our own backlog escalate (rule 11).
            return
        emit(WindowEnded(send.key, i, now))
        _advance(send, i + 1, now, emit)
    elif st == DEFERRED:
        if not send.tpl.sequence:  # every deferred step of a broadcast has the same end
            for j in range(len(send.tpl.steps)):
                if send.step_status(j) == DEFERRED:
                    _fire(send, j, now, emit, quiet=False)
            _settle(send, now, emit)
        elif not _fire(send, i, now, emit, quiet=False) or send.deadline is None:
            _advance(send, i + 1, now, emit)


def delivery_result(send: Send, i: int, ok: bool, reason: str | None, now: float, emit: Emit,
                    attempts: int = 1) -> None:
    """The channel's answer for step i: accepted (requested) or refused (failed)."""
    if send.answers & (1 << i):
        return
    emit(DeliveryAnswered(send.key, i, ok, reason, attempts, now))
    if send.status != ACTIVE:
        return
    if not ok:
        if send.step_status(i) == WAITING:
            _escalate_now(send, i, reason or "provider_failed", now, emit)
            return
        emit(StepFailed(send.key, i, reason or "provider_failed", now))
    if send.deadline is None and send.current == len(send.tpl.steps) - 1:
        _settle(send, now, emit)


def signal(send: Send, i: int, kind: int, at: float, now: float, emit: Emit) -> int:
    """An engagement (or failed) signal on step i; answers a `SignalOutcome`."""
    steps = send.tpl.steps
    if i < 0 or i >= len(steps):
        return SignalOutcome.UNKNOWN_MESSAGE
    st = (send.steps >> (4 * i)) & 15
    if st == PENDING or st == SKIPPED or st == DEFERRED:
        return SignalOutcome.UNKNOWN_MESSAGE
    if send.sig & (1 << (4 * i + kind)):
        return SignalOutcome.DUPLICATE  # rule 8
    emit(SignalApplied(send.key, i, kind, at, now))
    if send.status != ACTIVE or not send.tpl.sequence:
        return SignalOutcome.ACCEPTED  # rule 7: counted, changes nothing
    if kind == _FAILED:
        if i == send.current and st in (WAITING, FIRED):
            _escalate_now(send, i, "failed_signal", now, emit)
        return SignalOutcome.ACCEPTED
    rank = steps[i].stop_rank
    if rank < 0 or kind < rank:
        return SignalOutcome.ACCEPTED  # rule 1: below this step's condition
    cur = send.current
    # Rule 2 (the waiting step's own condition) or rule 3 (an earlier step's,
    # while a later one waits). Once the terminal step has fired there is
    # nothing left to stop.
    if (i == cur and st == WAITING) or (i < cur and send.step_status(cur) in (WAITING, DEFERRED)):
        emit(SendStopped(send.key, i, kind, now))
    return SignalOutcome.ACCEPTED


def closed_before(send: Send, i: int, kind: int, stamp: float) -> bool:
    """Whether a signal that reached the server at `stamp` finds step i's
    window already closed by escalation although its deadline was after
    `stamp`, and would have stopped the chain had it come in time (rule 11).
    One server never closes a window that early (its watermark waits for
    every request it has stamped); a cluster can, when a forward from
    another node is delayed past the owner's allowance. Acknowledging such
    a signal would claim an in-time signal that did not stop the chain, so
    the caller refuses it instead; its retry is judged as a late signal."""
    steps = send.tpl.steps
    if not 0 <= i < len(steps) or not send.tpl.sequence or kind == _FAILED:
        return False
    rank = steps[i].stop_rank
    if rank < 0 or kind < rank or send.sig & (1 << (4 * i + kind)) or send.step_status(i) != FIRED:
        return False
    deadline = send.window_deadline(i)
    return deadline is not None and deadline > stamp


def cancel(send: Send, now: float, emit: Emit) -> bool:
    """False when the send has already finished (the caller answers 409)."""
    if send.status != ACTIVE:
        return False
    emit(SendCancelled(send.key, now))
    return True
