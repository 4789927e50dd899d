"""JSON-ready views of sends, inbox messages and metrics (API.md shapes)."""

from __future__ import annotations

from typing import Any

import msgpack

from ..domain.channels import CHANNEL_SIGNALS, ENGAGEMENT
from ..domain.history import history
from ..domain.ids import format_message_id, format_send_id
from ..domain.send import (
    DEFERRED,
    DEFERRED_KEY,
    ORDER_KEY,
    REASON_KEY,
    SEND_STATUS,
    SKIPPED,
    STEP_FAILED,
    STEP_STATUS,
    Send,
)
from ..domain.templates import TemplateVersion
from ..domain.timefmt import iso
from .counters import SEND_COLUMNS, STEP_COLUMNS, GroupTotals

__all__ = ["SendQuery", "send_view", "inbox_message_view", "metrics_view", "decode_data"]


def decode_data(send: Send) -> dict[str, Any] | None:
    return msgpack.unpackb(send.data) if send.data is not None else None


def _signal_at(send: Send, i: int, kind: int) -> float | None:
    if not send.has_signal(i, kind):
        return None
    at: float | None = send.get(4 * i + kind)
    return at


def send_view(send: Send) -> dict[str, Any]:
    steps = []
    for i, step in enumerate(send.tpl.steps):
        st = send.step_status(i)
        fired = send.fired_at(i)
        deadline = send.window_deadline(i)
        reason = send.get(REASON_KEY + i) if st in (SKIPPED, STEP_FAILED) else None
        steps.append({
            "step": i + 1,
            "channel": step.channel,
            "messageId": format_message_id(send.key, i + 1),
            "status": STEP_STATUS[st],
            "stopCondition": step.stop_condition,
            "waitMinutes": step.wait_minutes,
            "firedAt": iso(fired),
            "deadline": iso(deadline),
            "reason": reason,
            "signals": {name: iso(_signal_at(send, i, k)) for k, name in enumerate(ENGAGEMENT)},
        })
        if st == DEFERRED:
            steps[-1]["deferredUntil"] = iso(send.get(DEFERRED_KEY + i)[1])
    scores = send.get(ORDER_KEY)
    if scores is not None:  # rule 14: the send's own order, and what each channel drew
        for entry, score in zip(steps, scores):
            entry["score"] = score
    stopped_by = send.get("stoppedBy")
    view: dict[str, Any] = {
        "id": format_send_id(send.key),
        "template": send.tpl.id,
        "templateVersion": send.tpl.version,
        "recipient": send.recipient.id,
        "status": SEND_STATUS[send.status],
        "createdAt": iso(send.created),
        "finishedAt": iso(send.finished),
        "stoppedBy": {"step": stopped_by // 4 + 1, "signal": ENGAGEMENT[stopped_by % 4]} if stopped_by is not None else None,
        "steps": steps,
        "history": history(send),
    }
    if send.tpl.by_engagement:
        view["order"] = [step.channel for step in send.tpl.steps]
    for c in send.counters:  # a campaign's sends count into its group "c:<id>"
        if c.group.startswith("c:"):
            view["campaign"] = c.group[2:]
    return view


def inbox_message_view(send: Send, i: int) -> dict[str, Any]:
    step = send.tpl.steps[i]
    content = step.content.render(decode_data(send), {"id": send.recipient.id, **send.recipient.view()})
    return {
        "messageId": format_message_id(send.key, i + 1),
        "sendId": format_send_id(send.key),
        "template": send.tpl.id,
        "content": content,
        "createdAt": iso(send.fired_at(i)),
        "deliveredAt": iso(_signal_at(send, i, 0)),
        "viewedAt": iso(_signal_at(send, i, 1)),
        "clickedAt": iso(_signal_at(send, i, 2)),
    }


def metrics_view(template: str, tpl: TemplateVersion | None, totals: GroupTotals | None) -> dict[str, Any]:
    sends, rows = totals if totals is not None else ([0] * len(SEND_COLUMNS), {})
    if tpl is not None and tpl.by_engagement:
        rows = _by_channel(rows)  # rule 14: each send numbers its steps its own way
        keys = set(rows) | {(0, s.channel) for s in tpl.steps}
    else:
        keys = set(rows)
        if tpl is not None:
            keys |= {(s.number, s.channel) for s in tpl.steps}
    steps = []
    for number, channel in sorted(keys):
        row = rows.get((number, channel), [0] * len(STEP_COLUMNS))
        entry: dict[str, Any] = {"step": number or None, "channel": channel}
        entry.update(zip(STEP_COLUMNS, row))
        if "viewed" not in CHANNEL_SIGNALS[channel]:
            entry["viewed"] = None
        if not entry["deferred"] and (tpl is None or tpl.quiet is None):
            del entry["deferred"]  # shown once quiet hours are in use (API: Metrics)
        steps.append(entry)
    finished = sum(sends[1:])
    outcomes = dict(zip(SEND_COLUMNS[1:], sends[1:]))
    if not outcomes["throttled"] and (tpl is None or tpl.throttle is None):
        del outcomes["throttled"]
    return {
        "template": template,
        "sends": {"started": sends[0], "active": sends[0] - finished, **outcomes},
        "steps": steps,
    }


def _by_channel(rows: dict[tuple[int, str], list[int]]) -> dict[tuple[int, str], list[int]]:
    merged: dict[tuple[int, str], list[int]] = {}
    for (_, channel), row in rows.items():
        acc = merged.setdefault((0, channel), [0] * len(row))
        for k, v in enumerate(row):
            acc[k] += v
    return merged


class SendQuery:
    """Which sends a listing wants (API: GET /v1/sends); matched on each shard."""

    __slots__ = ("recipient", "template", "group", "status", "limit", "before", "scan")

    def __init__(self, recipient: str | None, template: str | None, campaign: str | None, status: int | None,
                 limit: int, before: tuple[float, int] | None, scan: int) -> None:
        self.recipient, self.template, self.status = recipient, template, status
        self.group = None if campaign is None else f"c:{campaign}"
        self.limit, self.before, self.scan = limit, before, scan

    def matches(self, send: Send) -> bool:
        return ((self.recipient is None or send.recipient.id == self.recipient)
                and (self.template is None or send.tpl.id == self.template)
                and (self.status is None or send.status == self.status)
                and (self.group is None or any(c.group == self.group for c in send.counters)))
