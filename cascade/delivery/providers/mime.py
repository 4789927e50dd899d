"""A fired email step as a MIME message: what the `smtp` provider sends.

The rendered content's `subject` (or `title`), `text` (or `body`) and
`html` become the message: text/plain alone, text/html alone, or
multipart/alternative with both (plain first, so clients that prefer the
richer part pick html). Headers: From, To (the recipient's email), Subject,
Date, a Message-ID made from the cascade message id (so a retry, or a
re-post after a crash, carries the same one and receivers can de-duplicate)
and `X-Cascade-Message-Id` / `X-Cascade-Send-Id` for providers' webhooks.
Pure: no I/O.
"""

from __future__ import annotations

import email.errors
import email.utils
from email.message import EmailMessage
from typing import Any

from .base import OutgoingMessage

__all__ = ["MessageUnsendable", "build_email", "envelope_sender", "message_id_header"]


class MessageUnsendable(ValueError):
    """The message cannot become an email (no address, a header that would break the message)."""


def _text(value: Any) -> str | None:
    if value is None:
        return None
    return value if isinstance(value, str) else str(value)


def message_id_header(message_id: str, sender: str) -> str:
    """`<snd_….2@sender's domain>`: a message id is dot-atom text, so it is a valid id-left."""
    domain = sender.rpartition("@")[2] or "cascade.invalid"
    return f"<{message_id}@{domain}>"


def build_email(message: OutgoingMessage, sender: str) -> EmailMessage:
    """The MIME message for `message`, from `sender` (an address, optionally `Name <addr>`)."""
    to = message.recipient.get("email")
    if not isinstance(to, str) or "@" not in to:
        raise MessageUnsendable("no_address: the recipient has no email address")
    content = message.content if isinstance(message.content, dict) else {}
    subject = _text(content.get("subject", content.get("title"))) or ""
    text = _text(content.get("text", content.get("body")))
    html = _text(content.get("html"))
    if any(c in value for value in (to, subject, message.message_id) for c in "\r\n"):
        raise MessageUnsendable("invalid_header: a line break in the address, subject or message id")
    msg = EmailMessage()
    try:
        msg["From"] = sender
        msg["To"] = to
        msg["Subject"] = subject
    except (ValueError, IndexError, email.errors.MessageError) as exc:  # the header registry refuses what it cannot parse
        raise MessageUnsendable(f"invalid_header: {exc}") from None
    addresses = msg["To"].addresses
    if len(addresses) != 1 or not addresses[0].username or not addresses[0].domain:
        raise MessageUnsendable(f"invalid_address: {to!r} is not one email address")
    msg["Date"] = email.utils.formatdate(usegmt=True)
    _, address = email.utils.parseaddr(sender)
    msg["Message-ID"] = message_id_header(message.message_id, address)
    msg["X-Cascade-Message-Id"] = message.message_id
    msg["X-Cascade-Send-Id"] = message.send_id
    if html is not None and text is not None:
        msg.set_content(text)
        msg.add_alternative(html, subtype="html")
    elif html is not None:
        msg.set_content(html, subtype="html")
    else:
        msg.set_content(text or "")
    return msg


def envelope_sender(sender: str) -> str:
    """The bare address of `sender` for MAIL FROM."""
    address = email.utils.parseaddr(sender)[1]
    return address or sender

