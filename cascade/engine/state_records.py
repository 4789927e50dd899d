"""Engine state as msgpack-ready records, and back: what journals and
snapshots hold. Pure functions; no files, no threads.

Journal records (one per accepted state change, in the order applied; `w`
is the shard that wrote it, so recovery knows which snapshot covers it):

    ("T", id, version, body, created, updated)   template version stored
    ("TD", id)                                   template deleted
    ("C", now)                                   manual/scaled clock moved
    ("R", w, rid, fields, replace)               recipient written
    ("S", w, key, tpl, version, rid, fields, data, groups, origin, now, idem)
    ("G", w, key, step, kind, at, now)           signal accepted
    ("D", w, key, step, ok, reason, now)         provider answered
    ("X", w, key, now)                           send cancelled
    ("F", w, now)                                timers fired at `now`

Snapshot records of a shard: ("counters", ...), ("r", ...) per recipient,
("s", ...) per send; of the front: "T", "TD", ("I", ...) idempotency keys,
("C", now).
"""

from __future__ import annotations

from typing import Any

from .counters import CounterBook
from .recipients import Recipient
from .sequence import SNAPSHOT_MARK, Send
from .templates import TemplateRegistry, TemplateVersion

__all__ = ["recipient_record", "restore_recipient", "restore_send", "send_record", "template_record"]


def template_record(tv: TemplateVersion) -> tuple[Any, ...]:
    return ("T", tv.id, tv.version, dict(tv.body), tv.created_at, tv.updated_at)


def recipient_record(r: Recipient) -> tuple[Any, ...]:
    """The recipient and the order of its in-app inbox (as send keys)."""
    inbox = [send.key for send in r.inbox] if r.inbox else []
    return ("r", r.id, r.email, r.phone, list(r.push_tokens), r.preferences, inbox)


def restore_recipient(rec: Any) -> tuple[Recipient, list[int]]:
    _, rid, email, phone, tokens, prefs, inbox = rec
    return Recipient(rid, email, phone, tuple(tokens), dict(prefs)), list(inbox)


def send_record(send: Send) -> tuple[Any, ...]:
    return ("s", send.key, send.tpl.id, send.tpl.version, send.recipient.id, send.data, send.created,
            send.status, send.current, send.steps, send.sig, send.answers & ~SNAPSHOT_MARK, send.deadline,
            dict(send.notes) if send.notes else None, [c.group for c in send.counters])


def restore_send(rec: Any, templates: TemplateRegistry, recipient: Recipient, book: CounterBook) -> Send:
    (_, key, tpl_id, version, _rid, data, created, status, current, steps, sig, answers, deadline,
     notes, groups) = rec
    tpl = templates.version(tpl_id, version)
    if tpl is None:
        raise ValueError(f"send {key:x} needs template {tpl_id!r} version {version}, which the snapshot lacks")
    send = Send(key, tpl, recipient, data, created, book.counters_of(tuple(groups), tpl))
    send.status, send.current, send.steps, send.sig, send.answers = status, current, steps, sig, answers
    send.deadline = deadline
    send.notes = dict(notes) if notes else None
    return send
