"""Retry policy shared by the network providers (`webhook`, `smtp`,
`webpush`): capped exponential backoff with full jitter, the log line of an
attempt that will be retried, and the retry loop of an HTTP POST.

Invariants: a delay is in [0, min(backoff_max_s, backoff_base_s * 2**(attempt-1))];
a server's own hint (`Retry-After`) is honoured but capped at backoff_max_s;
every attempt that is retried is logged (info) with the message id, the
attempt number and the reason; the final outcome is logged by the dispatcher.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable, Collection

from .httpclient import HttpClient, HttpClientError, Target

__all__ = ["Backoff", "RETRYABLE_STATUSES", "post_with_retries"]

RETRYABLE_STATUSES = frozenset({408, 429})  # besides every 5xx


class Backoff:
    """When to try again, and saying so."""

    def __init__(self, max_attempts: int = 3, base_s: float = 0.2, max_s: float = 5.0,
                 rng: random.Random | None = None,
                 sleep: Callable[[float], Awaitable[object]] = asyncio.sleep) -> None:
        if max_attempts < 1:
            raise ValueError(f"max_attempts {max_attempts!r} is not allowed; it must be at least 1")
        if base_s < 0 or max_s < 0:
            raise ValueError(f"backoff_base_s {base_s!r} / backoff_max_s {max_s!r} are not allowed; use values >= 0")
        self.max_attempts = max_attempts
        self.base_s = float(base_s)
        self.max_s = float(max_s)
        self._rng = rng if rng is not None else random.Random()
        self._sleep = sleep

    def delay(self, attempt: int, hint_s: float | None = None) -> float:
        """Seconds to wait after failed attempt `attempt` (from 1)."""
        if hint_s is not None and hint_s >= 0:  # also rejects NaN
            return min(hint_s, self.max_s)
        return self._rng.uniform(0.0, min(self.max_s, self.base_s * 2 ** (attempt - 1)))

    async def wait(self, log: logging.Logger, channel: str, message_id: str, attempt: int, reason: str,
                   hint_s: float | None = None) -> None:
        """Log that `attempt` failed and will be retried, then sleep."""
        delay = self.delay(attempt, hint_s)
        log.info("%s delivery of %s failed on attempt %d of %d (%s); retrying in %.3f s",
                 channel, message_id, attempt, self.max_attempts, reason, delay,
                 extra={"event": "delivery_attempt_failed", "channel": channel, "messageId": message_id,
                        "attempt": attempt, "reason": reason, "retry_in_s": round(delay, 3)})
        await self._sleep(delay)


def retry_after_s(value: bytes | None) -> float | None:
    """A `Retry-After` in seconds, or None (absent, or an HTTP-date: our own backoff then)."""
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        return None


async def post_with_retries(client: HttpClient, target: Target, body: bytes, headers: Callable[[], bytes],
                            backoff: Backoff, log: logging.Logger, channel: str, message_id: str,
                            final: Collection[int] = (), where: str = "") -> tuple[int | None, str, int]:
    """POST until an answer that is not retried, or the attempts run out:
    (the last status, or None if none came; the last problem; attempts made).
    A 2xx, a status in `final` and any 4xx but 408/429 end it; 408, 429, 5xx,
    timeouts and connection errors are retried. `headers` is called for
    each attempt (a signature carries the time it was made); `where` is
    added to the logged reason (which push service)."""
    last = ""
    for attempt in range(1, backoff.max_attempts + 1):
        hint: float | None = None
        try:
            status, retry_after = await client.post(target, body, headers())
        except TimeoutError:
            last = "timeout"
        except (OSError, HttpClientError) as exc:
            last = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        else:
            if 200 <= status < 300 or status in final or (status not in RETRYABLE_STATUSES
                                                           and not 500 <= status < 600):
                return status, f"http_{status}", attempt
            last = f"http_{status}"
            hint = retry_after_s(retry_after)
        if attempt < backoff.max_attempts:
            await backoff.wait(log, channel, message_id, attempt, last + where, hint)
    return None, last, backoff.max_attempts
