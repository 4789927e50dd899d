"""The built-in in-app inbox of a recipient.

Delivering in-app appends the send to the recipient's inbox list, oldest
first (a template has one in-app step at most, so the send names the
message); nothing is rendered or copied until the inbox is listed, so an
inbox entry costs one pointer. Listing is newest first with a cursor (the
message id of the last entry returned); entries leave with their send when
its retention ends.
"""

from __future__ import annotations

from typing import Any

from ..domain.errors import InvalidInput
from ..domain.ids import format_message_id
from ..domain.recipients import Recipient
from ..domain.send import Send
from .views import inbox_message_view

__all__ = ["MAX_LIMIT", "page_of", "page_view", "remove_from_inbox"]

MAX_LIMIT = 200


def _step(send: Send) -> int:
    return next(s.number - 1 for s in send.tpl.steps if s.channel == "inapp")


def page_of(rcpt: Recipient | None, limit: int, before: str | None) -> tuple[list[tuple[Send, int]], bool]:
    """The entries of one page, newest first, and whether older ones remain."""
    entries = rcpt.inbox if rcpt is not None and rcpt.inbox else []
    end = len(entries)
    if before is not None:
        end = next((j for j in range(len(entries) - 1, -1, -1)
                    if format_message_id(entries[j].key, _step(entries[j]) + 1) == before), -1)
        if end < 0:
            raise InvalidInput(f"cursor {before!r} is not a message of this inbox",
                               [("before", "use the `next` value of the previous page")])
    start = max(0, end - limit)
    return [(send, _step(send)) for send in entries[start:end][::-1]], start > 0


def page_view(rcpt: Recipient | None, page: list[tuple[Send, int]], more: bool) -> dict[str, Any]:
    entries = rcpt.inbox if rcpt is not None and rcpt.inbox else []
    # Unseen: the recipient has neither viewed nor clicked it.
    unseen = sum(1 for send in entries if not (send.has_signal(_step(send), 1) or send.has_signal(_step(send), 2)))
    return {
        "messages": [inbox_message_view(send, i) for send, i in page],
        "next": format_message_id(page[-1][0].key, page[-1][1] + 1) if page and more else None,
        "unseen": unseen,
    }


def remove_from_inbox(send: Send) -> None:
    entries = send.recipient.inbox
    if entries:
        entries[:] = [e for e in entries if e is not send]
