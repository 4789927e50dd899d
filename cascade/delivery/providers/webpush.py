"""The `webpush` provider: each push step to every Web Push subscription of
the recipient (`webPush`), as RFC 8030 push messages with the payload
encrypted per RFC 8291 (aes128gcm, `http_ece`, the encryption `pywebpush`
uses) and VAPID (RFC 8292, vapid.py), posted by our own HTTP/1.1 client
(httpclient.py) on the delivery loop: nothing blocks it.

Invariants:
- the plaintext is compact JSON `{"messageId", "sendId", "template",
  "templateVersion", "step", "content"}`, at most 3,993 bytes (what one
  4,096-byte aes128gcm record holds); a larger one fails the step with
  `payload_too_large`;
- per subscription: any 2xx is requested; 404 and 410 mean the subscription
  is gone: it is reported to `on_gone` (the server drops it from the
  recipient through the engine, journaled), never retried; 408, 429, 5xx,
  timeouts and connection errors are retried like the webhook's (retry.py;
  a `Retry-After` is honoured, capped); any other answer fails it at once;
- the step is requested when at least one subscription took the message;
  a recipient without subscriptions fails with `no_address` (one with
  neither push tokens nor subscriptions is skipped before it gets here);
- each subscription's message is encrypted once with a fresh ephemeral
  key and salt; every attempt posts the same bytes.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import random
import ssl
import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

import http_ece  # type: ignore[import-untyped]
import msgspec
from cryptography.hazmat.primitives.asymmetric import ec

from .base import DeliveryOutcome, OutgoingMessage
from .httpclient import HttpClient, Target
from .retry import Backoff, post_with_retries
from .vapid import VapidSigner

__all__ = ["MAX_PAYLOAD", "OnGone", "WebPushProvider"]

MAX_PAYLOAD = 3993  # RFC 8291 section 4: the plaintext of a 4096-byte push message
OnGone = Callable[[str, tuple[str, ...]], Awaitable[object]]  # (recipient id, endpoints gone)
_GONE = frozenset({404, 410})
_log = logging.getLogger(__name__)
_encode = msgspec.json.Encoder(enc_hook=str).encode


def _b64url(text: str) -> bytes:
    bare = text.rstrip("=")
    return base64.urlsafe_b64decode(bare + "=" * (-len(bare) % 4))


def encrypt(payload: bytes, p256dh: str, auth: str) -> bytes:
    """`payload` as an aes128gcm push message body for one subscription (RFC 8291)."""
    return bytes(http_ece.encrypt(payload, private_key=ec.generate_private_key(ec.SECP256R1()),
                                  dh=_b64url(p256dh), auth_secret=_b64url(auth), version="aes128gcm"))


class _Result:
    __slots__ = ("attempts", "gone", "ok", "reason")

    def __init__(self, ok: bool, reason: str | None, attempts: int, gone: bool = False) -> None:
        self.ok, self.reason, self.attempts, self.gone = ok, reason, attempts, gone


class WebPushProvider:
    """Asynchronous provider for the push channel; see the module doc."""

    synchronous = False

    def __init__(self, name: str, vapid_private_key: str, vapid_subject: str, *, on_gone: OnGone | None = None,
                 timeout_s: float = 5.0, max_attempts: int = 3, max_in_flight: int = 256, ttl_s: int = 86400,
                 backoff_base_s: float = 0.2, backoff_max_s: float = 5.0, rng: random.Random | None = None,
                 sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
                 clock: Callable[[], float] = time.time, ssl_context: ssl.SSLContext | None = None) -> None:
        if not timeout_s > 0:
            raise ValueError(f"timeout_s {timeout_s!r} is not allowed; it must be greater than 0")
        if max_in_flight < 1:
            raise ValueError(f"max_in_flight {max_in_flight!r} is not allowed; it must be at least 1")
        try:
            self.signer = VapidSigner(vapid_private_key, vapid_subject, clock)
        except ValueError as exc:
            raise ValueError(f"vapid_private_key {exc}" if "vapid_subject" not in str(exc) else str(exc)) from None
        self.name = name
        self.on_gone = on_gone
        self.timeout_s = float(timeout_s)
        self.max_in_flight = max_in_flight
        self.ttl_s = int(ttl_s)
        self._backoff = Backoff(max_attempts, backoff_base_s, backoff_max_s, rng, sleep)
        self._ssl_context = ssl_context
        self._client: HttpClient | None = None

    def deliver_now(self, message: OutgoingMessage) -> DeliveryOutcome:
        raise TypeError(f"provider {self.name!r} is asynchronous; await deliver() on the delivery loop")

    async def deliver(self, message: OutgoingMessage) -> DeliveryOutcome:
        subs: list[dict[str, Any]] = list(message.recipient.get("webPush") or ())
        if not subs:
            return DeliveryOutcome(False, "no_address: the recipient has no webPush subscription", attempts=0)
        payload = _encode({"messageId": message.message_id, "sendId": message.send_id,
                           "template": message.template, "templateVersion": message.template_version,
                           "step": message.step, "content": message.content})
        if len(payload) > MAX_PAYLOAD:
            return DeliveryOutcome(False, f"payload_too_large: {len(payload)} bytes; a push message holds "
                                          f"at most {MAX_PAYLOAD}", attempts=0)
        if self._client is None:
            self._client = HttpClient(timeout_s=self.timeout_s, max_connections=self.max_in_flight,
                                      ssl_context=self._ssl_context)
        results = await asyncio.gather(*(self._push(message, sub, payload) for sub in subs))
        gone = tuple(sub["endpoint"] for sub, r in zip(subs, results, strict=True) if r.gone)
        if gone:
            await self._report_gone(message, gone)
        attempts = max(r.attempts for r in results)
        if any(r.ok for r in results):
            return DeliveryOutcome(True, attempts=attempts)
        if len(gone) == len(subs):
            return DeliveryOutcome(False, f"subscriptions_gone: {len(gone)} removed", attempts=attempts)
        first = next(r for r in results if not r.gone)
        return DeliveryOutcome(False, first.reason, attempts=attempts)

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.close()

    async def _push(self, message: OutgoingMessage, sub: dict[str, Any], payload: bytes) -> _Result:
        endpoint = str(sub.get("endpoint"))
        parts = urlsplit(endpoint)
        origin = f"{parts.scheme}://{parts.netloc}"
        try:
            target = Target(endpoint, {"Content-Type": "application/octet-stream", "Content-Encoding": "aes128gcm"},
                            user_agent="cascade-webpush")
            body = encrypt(payload, sub["keys"]["p256dh"], sub["keys"]["auth"])
            auth = self.signer.authorization(origin)
        except (ValueError, KeyError, TypeError) as exc:  # validated on PUT; only a corrupt record gets here
            return _Result(False, f"invalid_subscription: {exc}", 0)
        headers = b"TTL: %d\r\nUrgency: normal\r\nAuthorization: %s\r\n" % (self.ttl_s, auth.encode("ascii"))
        client = self._client
        assert client is not None
        status, last, attempts = await post_with_retries(client, target, body, lambda: headers, self._backoff, _log,
                                                         message.channel, message.message_id, _GONE,
                                                         f" from {origin}")
        if status is None:
            return _Result(False, f"retries_exhausted: {last} from {origin}", attempts)
        if 200 <= status < 300:
            return _Result(True, None, attempts)
        if status in _GONE:
            return _Result(False, last, attempts, gone=True)
        return _Result(False, f"{last} from {origin}", attempts)

    async def _report_gone(self, message: OutgoingMessage, endpoints: tuple[str, ...]) -> None:
        rid = str(message.recipient.get("id"))
        _log.info("%d Web Push subscription%s of %s gone (404/410): dropping", len(endpoints),
                  "" if len(endpoints) == 1 else "s", rid,
                  extra={"event": "webpush_gone", "recipient": rid, "messageId": message.message_id,
                         "endpoints": list(endpoints)})
        if self.on_gone is None:
            return
        try:
            await self.on_gone(rid, endpoints)
        except Exception:  # noqa: BLE001 (the step's outcome stands; the next 410 tries again)
            _log.exception("dropping Web Push subscriptions of %s failed", rid)
