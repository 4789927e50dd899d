"""Engine state as snapshot records, and back: what snapshot files hold.
Pure functions; no files, no threads. (What the journal holds, every state
change, is in domain/records.py.)

Snapshot records of a shard: ("counters", ...), ("rows", campaign, bitmap)
per campaign that may still fan out, then ("R*", [recipient, ...]) and
("S*", [send, ...]) in slices, and a ("shape", ...) record before the first
send of each template version and group set; of the front: `TemplatePut`,
`TemplateDeleted`, `IdempotencyKept`, `CampaignCreated`, `CampaignEnded`,
`ClockMoved`.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable

from ..domain.recipients import Recipient
from ..domain.records import TemplatePut
from ..domain.send import SNAPSHOT_MARK, Send
from ..domain.templates import TemplateRegistry, TemplateVersion
from .counters import CounterBook

__all__ = ["recipient_record", "restore_recipient", "restore_sends", "restore_shape", "send_record", "shape_record",
           "template_record"]


def template_record(tv: TemplateVersion) -> TemplatePut:
    return TemplatePut(tv.id, tv.version, dict(tv.body), tv.created_at, tv.updated_at)


def recipient_record(r: Recipient) -> tuple[Any, ...]:
    """One recipient of an ("R*", [...]) snapshot record, with the order of
    its in-app inbox (as send keys)."""
    inbox = [send.key for send in r.inbox] if r.inbox else []
    web_push = [list(sub) for sub in r.web_push]  # [endpoint, p256dh, auth]
    return (r.id, r.email, r.phone, list(r.push_tokens), r.preferences, inbox, web_push, r.time_zone)


def restore_recipient(rec: Any) -> tuple[Recipient, list[int]]:
    rid, email, phone, tokens, prefs, inbox, web_push, time_zone = rec
    subs = tuple((e, p, a) for e, p, a in web_push)
    return Recipient(rid, email, phone, tuple(tokens), dict(prefs), subs, time_zone), list(inbox)


def send_record(send: Send, shape: int) -> tuple[Any, ...]:
    """One send of an ("S*", [...]) snapshot record. `shape` indexes the
    file's ("shape", i, template, version, groups) records, which every send
    of one template version and group set shares. Shares `notes`: pack the
    record before the send can change."""
    return (send.key, shape, send.recipient.id, send.data, send.created, send.status, send.current,
            send.steps, send.sig, send.answers & ~SNAPSHOT_MARK, send.deadline, send.notes)


def shape_record(index: int, send: Send) -> tuple[Any, ...]:
    return ("shape", index, send.tpl.id, send.tpl.version, [c.group for c in send.counters], list(send.tpl.order))


def restore_sends(records: Iterable[Any], shapes: dict[int, tuple[TemplateVersion, Any]],
                  recipient_of: Callable[[str], Recipient], into: dict[int, Send]) -> None:
    """Sends of an ("S*", [...]) record into `into`, by key. A million of
    these at recovery: one loop, and each slot set once (`Send.__init__`
    would set half of them twice)."""
    new = object.__new__
    for key, shape, rid, data, created, status, current, steps, sig, answers, deadline, notes in records:
        tpl, counters = shapes[shape]
        send: Send = new(Send)
        send.key, send.tpl, send.recipient, send.data, send.created, send.counters = (
            key, tpl, recipient_of(rid), data, created, counters)
        send.status, send.current, send.steps, send.sig, send.answers = status, current, steps, sig, answers
        send.deadline, send.notes = deadline, notes or None  # notes: a fresh dict from the decoder, or None
        into[key] = send


def restore_shape(rec: Any, templates: TemplateRegistry, book: CounterBook) -> tuple[TemplateVersion, Any]:
    _, _, tpl_id, version, groups, order = rec
    tpl = templates.version(tpl_id, version)
    if tpl is None:
        raise ValueError(f"sends need template {tpl_id!r} version {version}, which the snapshot lacks")
    if order:
        tpl = tpl.ordered(tuple(order))  # an engagement-ordered send's own order (rule 14)
    return tpl, book.counters_of(tuple(groups), tpl)
