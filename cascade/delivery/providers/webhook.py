"""The `webhook` provider: POST each message to the user's endpoint.

Owns the HTTP side of API.md § Delivery to providers. Invariants:
- the body is compact UTF-8 JSON of `OutgoingMessage.payload()`, encoded by
  msgspec at a fraction of `json.dumps`'s cost: the bytes of
  `json.dumps(separators=(",", ":"), ensure_ascii=False)`, except that a
  float in exponent form reads `1e16` rather than `1e+16` (the same number);
- every attempt of one message carries the same `Idempotency-Key`, so
  re-posts are harmless;
- with a secret, every attempt is signed afresh over exactly the bytes that
  are sent: `X-Cascade-Signature: t=<unix seconds>,sha256=<hex HMAC-SHA256
  of "<t>.<body>">`, so a receiver can refuse stale or replayed posts;
- 408, 429, 5xx, timeouts and connection errors are retried, at most
  `max_attempts` attempts in all, sleeping with capped exponential backoff and
  full jitter (or the server's `Retry-After`, capped too) between them; each
  attempt that is retried is logged (info) with the message id, the attempt
  and the reason; the final outcome is logged by the dispatcher;
- `deliver` never raises for network trouble: it answers a `DeliveryOutcome`.
The posts go through `httpclient.HttpClient` (keep-alive, at most
`max_in_flight` connections, `timeout_s` per attempt as a whole), created
lazily on the loop that first delivers and closed by `close()`.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import random
import ssl
import time
from collections.abc import Awaitable, Callable
from urllib.parse import urlsplit

import msgspec

from .base import DeliveryOutcome, OutgoingMessage
from .httpclient import HttpClient, Target
from .retry import Backoff, post_with_retries

__all__ = ["WebhookProvider", "sign"]

_ACCEPTED_AT_ONCE = DeliveryOutcome(True, attempts=1)  # the common answer, made once (it is frozen)
_log = logging.getLogger(__name__)
# Anything msgspec cannot encode natively becomes its str(), as json.dumps(default=str) did.
_encode = msgspec.json.Encoder(enc_hook=str).encode


def sign(secret: bytes | hmac.HMAC, body: bytes, timestamp: int) -> bytes:
    """The `X-Cascade-Signature` value for `body` made at `timestamp`:
    `t=<timestamp>,sha256=<hex HMAC-SHA256 of "<timestamp>.<body>">`.
    `secret` may be `hmac.new(secret, digestmod="sha256")` made once: a copy
    of it costs less than keying a new one."""
    mac = hmac.new(secret, digestmod="sha256") if isinstance(secret, bytes) else secret.copy()
    stamp = b"%d" % timestamp
    mac.update(stamp + b".")
    mac.update(body)
    return b"t=%s,sha256=%s" % (stamp, mac.hexdigest().encode("ascii"))


class WebhookProvider:
    """Asynchronous provider posting to one URL, with its own retries."""

    synchronous = False

    def __init__(
        self,
        name: str,
        url: str,
        secret: str | None = None,
        timeout_s: float = 5.0,
        max_attempts: int = 3,
        backoff_base_s: float = 0.2,
        backoff_max_s: float = 5.0,
        rng: random.Random | None = None,
        sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
        *,
        max_in_flight: int = 256,
        clock: Callable[[], float] = time.time,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"webhook url {url!r} is not allowed; use an absolute http:// or https:// URL")
        if not timeout_s > 0:
            raise ValueError(f"timeout_s {timeout_s!r} is not allowed; it must be greater than 0")
        if max_in_flight < 1:
            raise ValueError(f"max_in_flight {max_in_flight!r} is not allowed; it must be at least 1")
        self.name = name
        self.url = url
        self.timeout_s = float(timeout_s)
        self._backoff = Backoff(max_attempts, backoff_base_s, backoff_max_s, rng, sleep)  # checks its values
        self.max_attempts = max_attempts
        self.max_in_flight = max_in_flight
        self._hmac = hmac.new(secret.encode("utf-8"), digestmod="sha256") if secret is not None else None
        self._clock = clock  # the signature's time
        self._ssl_context = ssl_context  # for https://; None: the system's trust store
        try:
            self._target = Target(url, {"Content-Type": "application/json"}, user_agent="cascade-webhook")
        except ValueError as exc:
            raise ValueError(f"webhook url {url!r} is not allowed: {exc}") from None
        self._client: HttpClient | None = None

    def deliver_now(self, message: OutgoingMessage) -> DeliveryOutcome:
        raise TypeError(f"provider {self.name!r} is asynchronous; await deliver() on the delivery loop")

    async def deliver(self, message: OutgoingMessage) -> DeliveryOutcome:
        body = _encode(message.payload())
        key = message.message_id
        if "\r" in key or "\n" in key:
            return DeliveryOutcome(False, "invalid_message_id", attempts=0)
        head = b"Idempotency-Key: %s\r\n" % key.encode("utf-8")
        client = self._client
        if client is None:
            client = self._client = HttpClient(timeout_s=self.timeout_s, max_connections=self.max_in_flight,
                                               ssl_context=self._ssl_context)
        mac = self._hmac

        def headers() -> bytes:  # every attempt signed afresh, with the time it is made
            if mac is None:
                return head
            return head + b"X-Cascade-Signature: %s\r\n" % sign(mac, body, int(self._clock()))

        status, last, attempts = await post_with_retries(client, self._target, body, headers, self._backoff, _log,
                                                         message.channel, key)
        if status is None:
            return DeliveryOutcome(False, f"retries_exhausted: {last}", attempts=attempts)
        if 200 <= status < 300:
            return _ACCEPTED_AT_ONCE if attempts == 1 else DeliveryOutcome(True, attempts=attempts)
        return DeliveryOutcome(False, last, attempts=attempts)

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.close()

