"""A send's history: what happened to it and why, oldest first (API.md,
"Sends": `history`).

It is derived from the send's state when a view asks, not kept as a log:
every fact it shows is already held for the steps' views (fired times,
signal times, reasons, the deadline a window closed on, who stopped the
chain), so the million sends that nobody looks at pay nothing for it. The
few facts the steps do not show (when a step failed, deferrals, retries)
are notes on the rare sends they happen to. Bounded by construction: at
most four steps, each with at most nine entries, so a history never nears
64 entries.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .channels import SIGNALS
from .send import (
    CANCELLED,
    DEFERRED_KEY,
    FAILED_AT_KEY,
    FIRED,
    PENDING,
    REASON_KEY,
    RETRIES_KEY,
    SEND_STATUS,
    SKIPPED,
    STEP_FAILED,
    STEP_STOPPED,
    STOPPED,
    THROTTLED,
    Send,
)
from .timefmt import iso

__all__ = ["history"]

Entry = tuple[float, int, dict[str, Any]]  # (at, order of emission, entry)


def history(send: Send) -> list[dict[str, Any]]:
    entries: list[Entry] = []

    def add(at: float | None, step: int | None, what: str, detail: dict[str, Any] | None) -> None:
        if at is None:
            return
        entry = {"at": at, "step": step, "what": what, "detail": detail}
        entries.append((at, len(entries), entry))

    steps = send.tpl.steps
    after: dict[str, Any] = {"after": "start"}  # why the next step to fire fires
    for i, step in enumerate(steps):
        st = send.step_status(i)
        n = i + 1
        deferred = send.get(DEFERRED_KEY + i)
        if deferred is not None:
            add(deferred[0], n, "deferred", {"until": iso(deferred[1]), "reason": "quiet_hours", **after})
        if st == PENDING:
            continue
        if st == SKIPPED:
            reason = send.get(REASON_KEY + i)
            add(_skipped_at(send, i), n, "skipped", {"channel": step.channel, "reason": reason})
            after = {"after": "skipped", "previousStep": n, "reason": reason}
            continue
        add(send.fired_at(i), n, "fired", {"channel": step.channel, **after})
        retried = send.get(RETRIES_KEY + i)
        if retried is not None:  # the provider's answer came after it had tried more than once
            add(retried[0], n, "delivery_retried", {"attempts": retried[1]})
        if st == STEP_FAILED:
            reason = send.get(REASON_KEY + i)
            add(send.get(FAILED_AT_KEY + i), n, "delivery_failed", {"channel": step.channel, "reason": reason})
            after = {"after": "delivery_failed", "previousStep": n, "reason": reason}
        elif step.stop_rank >= 0 and send.tpl.sequence and (st == FIRED or (st == STEP_STOPPED and i < send.current)):
            # (a step stopped by a late signal, rule 3, had its window end first: the chain went on past it)
            deadline = send.window_deadline(i)
            add(deadline, n, "window_ended", {"stopCondition": step.stop_condition, "deadline": iso(deadline)})
            after = {"after": "window_ended", "previousStep": n, "stopCondition": step.stop_condition}
        for kind, name in enumerate(SIGNALS):  # after the window's end in a tie: a signal at it was late
            if send.has_signal(i, kind):
                add(send.get(4 * i + kind), n, "signal", {"signal": name})
    _add_outcome(send, add)
    entries.sort(key=lambda e: (e[0], e[1]))
    out = []
    for at, _, entry in entries:
        entry["at"] = iso(at)
        out.append(entry)
    return out


def _add_outcome(send: Send, add: Callable[[float | None, int | None, str, dict[str, Any] | None], None]) -> None:
    finished = send.finished
    if send.status == STOPPED:
        by = send.get("stoppedBy")
        add(finished, by // 4 + 1, "stopped", {"signal": SIGNALS[by % 4]})
    elif send.status == CANCELLED:
        add(finished, None, "cancelled", None)
    elif send.status == THROTTLED:  # rule 13: it started no step
        limit, window = send.tpl.throttle or (0, 0.0)
        add(finished, None, "skipped", {"reason": "throttled", "limit": limit, "windowMinutes": int(window // 60)})
    elif finished is not None:  # completed, or failed: no step reached its channel
        add(finished, None, "completed", {"status": SEND_STATUS[send.status]})


def _skipped_at(send: Send, i: int) -> float | None:
    """A skipped step is passed over in the same instant the next step
    fires (or the send settles): that instant, without a note of its own."""
    for j in range(i + 1, len(send.tpl.steps)):
        fired = send.fired_at(j)
        if fired is not None:
            return fired
        failed: float | None = send.get(FAILED_AT_KEY + j)
        if failed is not None:
            return failed
    return send.finished if send.finished is not None else send.created
