"""The `smtp` provider: each email step as a MIME message (mime.py) to an
SMTP server, through `aiosmtplib` on the delivery loop.

Invariants:
- a 250 for the whole transaction means requested; an SMTP 5xx (sender,
  recipient or data refused, authentication refused) is `failed` at once
  with `smtp_<code>`; a 4xx, a timeout or a connection error is retried, at
  most `max_attempts` attempts in all, with the webhook's backoff and
  jitter (retry.py); every attempt of one message carries the same
  Message-ID and `X-Cascade-Message-Id`, so receivers can de-duplicate;
- connections are reused: a pool of at most `max_connections` (the
  channel's max_in_flight) open connections, idle ones reused last in,
  first out and closed after `idle_timeout_s` unused; one that failed on
  the wire is closed, never reused; a reused one the server had closed
  while idle gets the message once more on a fresh connection, within the
  same attempt (the keep-alive race of httpclient.py);
- `timeout_s` bounds an attempt as a whole (waiting for a connection,
  connecting, TLS, login and the transaction);
- `deliver` never raises for mail trouble: it answers a `DeliveryOutcome`.
"""

from __future__ import annotations

import asyncio
import logging
import random
import socket
import ssl
import time
from collections import deque
from collections.abc import Awaitable, Callable
from email.message import EmailMessage

import aiosmtplib

from .base import DeliveryOutcome, OutgoingMessage
from .mime import MessageUnsendable, build_email, envelope_sender
from .retry import Backoff

__all__ = ["SmtpProvider"]

_log = logging.getLogger(__name__)
_DEFAULT_PORT = {"tls": 465, "starttls": 587, "none": 25}


class SmtpProvider:
    """Asynchronous provider sending email through one SMTP server."""

    synchronous = False

    def __init__(self, name: str, host: str, sender: str, *, port: int | None = None, tls: str = "starttls",
                 username: str | None = None, password: str | None = None, timeout_s: float = 5.0,
                 max_attempts: int = 3, max_connections: int = 8, idle_timeout_s: float = 30.0,
                 backoff_base_s: float = 0.2, backoff_max_s: float = 5.0, rng: random.Random | None = None,
                 sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
                 ssl_context: ssl.SSLContext | None = None) -> None:
        if tls not in _DEFAULT_PORT:
            raise ValueError(f"tls {tls!r} is not allowed; use one of starttls, tls, none")
        if not timeout_s > 0:
            raise ValueError(f"timeout_s {timeout_s!r} is not allowed; it must be greater than 0")
        if max_connections < 1:
            raise ValueError(f"max_connections {max_connections!r} is not allowed; it must be at least 1")
        if "@" not in envelope_sender(sender):
            raise ValueError(f"from {sender!r} is not an email address")
        self.name = name
        self.host = host
        self.port = port if port is not None else _DEFAULT_PORT[tls]
        self.tls = tls
        self.sender = sender
        self.timeout_s = float(timeout_s)
        self.max_connections = max_connections
        self.idle_timeout_s = idle_timeout_s
        self._envelope_from = envelope_sender(sender)
        self._username, self._password = username, password
        self._ssl_context = ssl_context  # None: the system's trust store
        self._backoff = Backoff(max_attempts, backoff_base_s, backoff_max_s, rng, sleep)
        self._local_hostname = socket.gethostname() or "localhost"  # not getfqdn(): no DNS on the loop
        self._idle: deque[tuple[aiosmtplib.SMTP, float]] = deque()  # (connection, idle since), newest last
        self._slots: asyncio.Semaphore | None = None
        self._open: set[aiosmtplib.SMTP] = set()  # idle or in use

    @property
    def max_attempts(self) -> int:
        return self._backoff.max_attempts

    def connections(self) -> int:
        """Connections open now (idle or in use)."""
        return len(self._open)

    def deliver_now(self, message: OutgoingMessage) -> DeliveryOutcome:
        raise TypeError(f"provider {self.name!r} is asynchronous; await deliver() on the delivery loop")

    async def deliver(self, message: OutgoingMessage) -> DeliveryOutcome:
        try:
            mail = build_email(message, self.sender)
        except MessageUnsendable as exc:
            return DeliveryOutcome(False, str(exc), attempts=0)
        to = mail["To"].addresses[0].addr_spec  # build_email made sure there is exactly one
        last = ""
        attempts = self._backoff.max_attempts
        for attempt in range(1, attempts + 1):
            try:
                async with asyncio.timeout(self.timeout_s):
                    await self._send(mail, to)
            except TimeoutError:  # ours, or aiosmtplib's own (a subclass)
                last = "timeout"
            except aiosmtplib.SMTPRecipientsRefused as exc:
                refused = exc.recipients[0] if exc.recipients else None
                code = refused.code if refused is not None else 550
                if code >= 500:
                    return DeliveryOutcome(False, f"smtp_{code}: {refused.message if refused else ''}".rstrip(": "),
                                           attempts=attempt)
                last = f"smtp_{code}"
            except aiosmtplib.SMTPResponseException as exc:
                if exc.code >= 500:
                    return DeliveryOutcome(False, f"smtp_{exc.code}: {exc.message}", attempts=attempt)
                last = f"smtp_{exc.code}"
            except aiosmtplib.SMTPNotSupported as exc:  # e.g. no STARTTLS offered: retrying cannot help
                return DeliveryOutcome(False, f"smtp_not_supported: {exc}", attempts=attempt)
            except ssl.SSLCertVerificationError as exc:  # the server is not who it says: retrying cannot help
                return DeliveryOutcome(False, f"tls_certificate: {exc.verify_message or exc}", attempts=attempt)
            except ValueError as exc:  # an address aiosmtplib will not put in an envelope
                return DeliveryOutcome(False, f"invalid_address: {exc}", attempts=attempt)
            except (aiosmtplib.SMTPException, OSError) as exc:
                last = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            else:
                return DeliveryOutcome(True, attempts=attempt)
            if attempt < attempts:
                await self._backoff.wait(_log, message.channel, message.message_id, attempt, last)
        return DeliveryOutcome(False, f"retries_exhausted: {last}", attempts=attempts)

    async def close(self) -> None:
        idle, self._idle = list(self._idle), deque()
        if idle:
            await asyncio.wait([asyncio.ensure_future(self._quit(conn)) for conn, _ in idle], timeout=1.0)
        for conn, _ in idle:
            self._drop(conn)

    # -- the pool ----------------------------------------------------------------
    async def _send(self, mail: EmailMessage, to: str) -> None:
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.max_connections)
        async with self._slots:
            conn = self._take_idle()
            if conn is not None:
                try:
                    await self._transact(conn, mail, to)
                    return
                except aiosmtplib.SMTPServerDisconnected:
                    pass  # closed by the server while idle, as we wrote: once more, on a new connection
            await self._transact(await self._connect(), mail, to)

    async def _transact(self, conn: aiosmtplib.SMTP, mail: EmailMessage, to: str) -> None:
        try:
            await conn.send_message(mail, sender=self._envelope_from, recipients=[to])
        except aiosmtplib.SMTPResponseException:
            self._give_back(conn)  # an answer, not a broken wire (aiosmtplib sent RSET)
            raise
        except aiosmtplib.SMTPRecipientsRefused:
            self._give_back(conn)
            raise
        except BaseException:  # the wire, a timeout or a cancellation: the state of the session is unknown
            self._drop(conn)
            raise
        self._give_back(conn)

    def _take_idle(self) -> aiosmtplib.SMTP | None:
        now = time.monotonic()
        while self._idle:
            conn, since = self._idle.pop()
            if conn.is_connected and now - since <= self.idle_timeout_s:
                return conn
            self._drop(conn)
        return None

    def _give_back(self, conn: aiosmtplib.SMTP) -> None:
        if conn.is_connected:
            self._idle.append((conn, time.monotonic()))
        else:
            self._drop(conn)

    def _drop(self, conn: aiosmtplib.SMTP) -> None:
        self._open.discard(conn)
        conn.close()

    async def _connect(self) -> aiosmtplib.SMTP:
        conn = aiosmtplib.SMTP(
            hostname=self.host, port=self.port, username=self._username, password=self._password,
            local_hostname=self._local_hostname, timeout=self.timeout_s, use_tls=self.tls == "tls",
            start_tls=self.tls == "starttls", tls_context=self._ssl_context)
        self._open.add(conn)
        try:
            await conn.connect()  # EHLO, STARTTLS and AUTH as configured
        except BaseException:
            self._drop(conn)
            raise
        return conn

    async def _quit(self, conn: aiosmtplib.SMTP) -> None:
        try:
            await conn.quit(timeout=1.0)
        except (aiosmtplib.SMTPException, OSError):
            pass
