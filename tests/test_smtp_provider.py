"""The `smtp` provider against a real SMTP server in the test process
(aiosmtpd): what arrives (MIME parts, headers), authentication, STARTTLS
with a certificate made here, retries of 4xx and broken connections, 5xx
refused at once, connection reuse bounded by the pool, and each retry
logged with the message id, the attempt and the reason."""

from __future__ import annotations

import asyncio
import email
import email.policy
import logging
from pathlib import Path
from typing import Any

import pytest
from smtpserver import Mailbox, free_port, running_smtp, self_signed

from cascade.delivery.providers.base import OutgoingMessage
from cascade.delivery.providers.smtp import SmtpProvider

pytestmark = [pytest.mark.timeout(30),
              # aiosmtpd's own warning when a test server takes AUTH without TLS (the plain + auth case)
              pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS:UserWarning")]

CONTENT = {"subject": "Your order A1 shipped", "text": "Order A1 is on its way.",
           "html": "<p>Order <b>A1</b> is on its way.</p>"}


def message(step: int = 2, content: Any = None, email_to: str | None = "ann@example.com",
            send_id: str = "snd_0123456789abcde") -> OutgoingMessage:
    recipient = {"id": "u-ann", "preferences": {}}
    if email_to is not None:
        recipient["email"] = email_to
    return OutgoingMessage(f"{send_id}.{step}", send_id, "order-shipped", 1, step, "email", recipient,
                           CONTENT if content is None else content)


class Sleeps:
    """Stands in for asyncio.sleep between attempts: records the delays, waits for nothing."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)


def provider(port: int, sleeps: Sleeps | None = None, **kwargs: Any) -> SmtpProvider:
    kwargs.setdefault("tls", "none")
    return SmtpProvider("email", "127.0.0.1", "Shop <shop@example.com>", port=port, sleep=sleeps or Sleeps(),
                        **kwargs)


def parsed(mailbox: Mailbox, i: int = 0) -> email.message.EmailMessage:
    envelope, _ = mailbox.accepted[i]
    msg = email.message_from_bytes(envelope.original_content or envelope.content, policy=email.policy.default)
    assert isinstance(msg, email.message.EmailMessage)
    return msg


async def test_an_email_arrives_as_multipart_alternative_with_cascade_headers() -> None:
    with running_smtp() as (mailbox, port):
        smtp = provider(port)
        outcome = await smtp.deliver(message())
        await smtp.close()
    assert outcome.ok and outcome.attempts == 1
    envelope, _ = mailbox.accepted[0]
    assert envelope.mail_from == "shop@example.com" and envelope.rcpt_tos == ["ann@example.com"]
    msg = parsed(mailbox)
    assert msg["From"] == "Shop <shop@example.com>" and msg["To"] == "ann@example.com"
    assert msg["Subject"] == "Your order A1 shipped"
    assert msg["Message-ID"] == "<snd_0123456789abcde.2@example.com>"
    assert msg["X-Cascade-Message-Id"] == "snd_0123456789abcde.2"
    assert msg.get_content_type() == "multipart/alternative"
    parts = {part.get_content_type(): part.get_content().strip() for part in msg.iter_parts()}
    assert parts == {"text/plain": CONTENT["text"], "text/html": CONTENT["html"]}


async def test_text_alone_is_text_plain_and_html_alone_is_text_html() -> None:
    with running_smtp() as (mailbox, port):
        smtp = provider(port)
        assert (await smtp.deliver(message(1, {"subject": "Hi", "text": "plain only"}))).ok
        assert (await smtp.deliver(message(2, {"subject": "Hi", "html": "<p>rich only</p>"}))).ok
        await smtp.close()
    first, second = parsed(mailbox, 0), parsed(mailbox, 1)
    assert first.get_content_type() == "text/plain" and first.get_content().strip() == "plain only"
    assert second.get_content_type() == "text/html" and second.get_content().strip() == "<p>rich only</p>"


async def test_a_recipient_without_an_email_fails_without_a_connection() -> None:
    with running_smtp() as (mailbox, port):
        smtp = provider(port)
        outcome = await smtp.deliver(message(email_to=None))
        assert not outcome.ok and outcome.reason is not None and outcome.reason.startswith("no_address")
        two = await smtp.deliver(message(email_to="ann@example.com, bob@example.com"))
        assert not two.ok and two.reason is not None and two.reason.startswith("invalid_address"), two
        assert mailbox.connections == 0 and smtp.connections() == 0


async def test_login_with_the_configured_user() -> None:
    with running_smtp(users={"shop": "s3cret"}) as (mailbox, port):
        good = provider(port, username="shop", password="s3cret")
        assert (await good.deliver(message())).ok
        await good.close()
        wrong = provider(port, username="shop", password="nope")
        outcome = await wrong.deliver(message(3))
        await wrong.close()
    assert len(mailbox.accepted) == 1
    assert not outcome.ok and outcome.reason is not None and outcome.reason.startswith("smtp_535"), outcome
    assert outcome.attempts == 1  # 5xx: refused, not retried


async def test_starttls_with_a_certificate_the_client_trusts(tmp_path: Path) -> None:
    server_ctx, client_ctx = self_signed(tmp_path)
    with running_smtp(users={"shop": "s3cret"}, tls=server_ctx) as (mailbox, port):
        smtp = provider(port, tls="starttls", username="shop", password="s3cret", ssl_context=client_ctx)
        outcome = await smtp.deliver(message())
        await smtp.close()
        # The system's trust store does not know the certificate: refused at once, nothing sent.
        untrusting = provider(port, tls="starttls", username="shop", password="s3cret", max_attempts=2)
        refused = await untrusting.deliver(message(3))
        await untrusting.close()
    assert outcome.ok, outcome
    assert parsed(mailbox)["Subject"] == CONTENT["subject"]
    assert len(mailbox.accepted) == 1
    assert not refused.ok and refused.attempts == 1, refused
    assert refused.reason is not None and refused.reason.startswith("tls_certificate: "), refused


async def test_a_4xx_is_retried_and_then_accepted(caplog: pytest.LogCaptureFixture) -> None:
    sleeps = Sleeps()
    caplog.set_level(logging.INFO, logger="cascade.delivery.providers.smtp")
    with running_smtp() as (mailbox, port):
        mailbox.data_answers.append("451 4.3.0 Try again later")
        smtp = provider(port, sleeps, max_attempts=3, backoff_base_s=0.2)
        outcome = await smtp.deliver(message())
        await smtp.close()
    assert outcome.ok and outcome.attempts == 2
    assert len(mailbox.accepted) == 1 and parsed(mailbox)["Message-ID"] == "<snd_0123456789abcde.2@example.com>"
    assert len(sleeps.delays) == 1 and 0.0 <= sleeps.delays[0] <= 0.2  # full jitter below the first step
    retried = [r for r in caplog.records if getattr(r, "event", None) == "delivery_attempt_failed"]
    assert len(retried) == 1
    record: Any = retried[0]
    assert (record.messageId, record.attempt, record.reason) == ("snd_0123456789abcde.2", 1, "smtp_451")


async def test_a_5xx_fails_at_once_with_its_code() -> None:
    sleeps = Sleeps()
    with running_smtp() as (mailbox, port):
        mailbox.data_answers.append("550 5.7.1 Message rejected")
        smtp = provider(port, sleeps)
        outcome = await smtp.deliver(message())
        await smtp.close()
    assert not outcome.ok and outcome.attempts == 1 and sleeps.delays == []
    assert outcome.reason == "smtp_550: 5.7.1 Message rejected"
    assert mailbox.accepted == []


async def test_4xx_every_time_exhausts_the_attempts() -> None:
    sleeps = Sleeps()
    with running_smtp() as (mailbox, port):
        mailbox.data_answers.extend(["421 4.7.0 busy"] * 3)
        smtp = provider(port, sleeps, max_attempts=3)
        outcome = await smtp.deliver(message())
        await smtp.close()
    assert not outcome.ok and outcome.attempts == 3 and len(sleeps.delays) == 2
    assert outcome.reason is not None and outcome.reason.startswith("retries_exhausted")


async def test_nobody_listening_is_retried_as_a_connection_error() -> None:
    sleeps = Sleeps()
    smtp = provider(free_port(), sleeps, max_attempts=2)
    outcome = await smtp.deliver(message())
    await smtp.close()
    assert not outcome.ok and outcome.attempts == 2 and len(sleeps.delays) == 1
    assert outcome.reason is not None and outcome.reason.startswith("retries_exhausted: ")
    assert smtp.connections() == 0


async def test_a_server_that_does_not_answer_times_out_per_attempt() -> None:
    with running_smtp() as (mailbox, port):
        mailbox.hold.set()
        smtp = provider(port, max_attempts=2, timeout_s=0.3)
        outcome = await smtp.deliver(message())
        mailbox.hold.clear()
        await smtp.close()
    assert not outcome.ok and outcome.reason == "retries_exhausted: timeout" and outcome.attempts == 2
    assert smtp.connections() == 0  # a connection in an unknown state is never reused


async def test_one_connection_carries_many_messages() -> None:
    with running_smtp() as (mailbox, port):
        smtp = provider(port)
        for step in (1, 2, 3):
            assert (await smtp.deliver(message(step))).ok
        await smtp.close()
    assert len(mailbox.accepted) == 3 and mailbox.connections == 1
    assert len({peer for _, peer in mailbox.accepted}) == 1


async def test_concurrent_messages_use_at_most_max_connections() -> None:
    with running_smtp() as (mailbox, port):
        smtp = provider(port, max_connections=2)
        outcomes = await asyncio.gather(*(smtp.deliver(message(1, send_id=f"snd_{i:015x}")) for i in range(12)))
        assert smtp.connections() <= 2
        await smtp.close()
    assert all(o.ok for o in outcomes)
    assert len(mailbox.accepted) == 12 and len({peer for _, peer in mailbox.accepted}) <= 2


async def test_a_connection_the_server_dropped_is_replaced_without_losing_the_message() -> None:
    mailbox = Mailbox()
    port = free_port()
    smtp = provider(port)
    with running_smtp(port=port, mailbox=mailbox):
        assert (await smtp.deliver(message(1))).ok
    with running_smtp(port=port, mailbox=mailbox):  # a restarted server: the pooled connection is dead
        outcome = await smtp.deliver(message(2))
    await smtp.close()
    assert outcome.ok and outcome.attempts == 1
    assert [parsed(mailbox, i)["X-Cascade-Message-Id"] for i in range(2)] == [
        "snd_0123456789abcde.1", "snd_0123456789abcde.2"]
