"""Idempotency keys of sends, kept 24 hours at the front door.

The same key with the same body answers the send it made; with another body
it is a conflict. A key is claimed before the send is routed, so two
concurrent requests with one key make one send (the send key is chosen
before the send is routed, so the second request reads the first's send). Expired keys leave in insertion order.

"The same body" means the same JSON values: `canonical_json` sorts object
keys (at every depth) before the request is digested, so a client that
re-serialises its retry with its keys in another order is not refused.
"""

from __future__ import annotations

import threading
from collections import deque
from typing import Any

from ..domain.errors import Conflict

__all__ = ["IdempotencyKeys", "Claim", "canonical_json"]


def canonical_json(value: Any) -> Any:
    """`value` with the keys of every object in sorted order, so two requests
    that differ only in how their JSON was spelled pack to the same bytes.
    Arrays keep their order (it is part of the value); scalars are kept as
    they are (1 and 1.0 stay apart: they render differently)."""
    if isinstance(value, dict):
        return {k: canonical_json(value[k]) for k in sorted(value)}
    if isinstance(value, (list, tuple)):
        return [canonical_json(v) for v in value]
    return value


class Claim:
    __slots__ = ("key", "digest", "send_key", "expires")

    def __init__(self, key: str, digest: bytes, expires: float) -> None:
        self.key = key
        self.digest = digest
        self.send_key: int | None = None
        self.expires = expires


class IdempotencyKeys:
    def __init__(self, ttl_s: float = 86400.0, max_keys: int = 10_000_000) -> None:
        self.ttl_s = ttl_s
        self.max_keys = max_keys
        self._claims: dict[str, Claim] = {}
        self._order: deque[Claim] = deque()
        self._lock = threading.Lock()

    canonical = staticmethod(canonical_json)

    def __len__(self) -> int:
        return len(self._claims)

    def claim(self, key: str, digest: bytes, now: float) -> tuple[Claim, bool]:
        """(claim, fresh): fresh means the caller must make the send."""
        with self._lock:
            self._expire(now)
            claim = self._claims.get(key)
            if claim is not None:
                if claim.digest != digest:
                    raise Conflict(f"idempotencyKey {key!r} was used with another request body",
                                   [("$.idempotencyKey", "reuse a key only to repeat the same request")])
                return claim, False
            claim = Claim(key, digest, now + self.ttl_s)
            self._claims[key] = claim
            self._order.append(claim)
            return claim, True

    def release(self, claim: Claim) -> None:
        """The send could not be made: forget the key so a retry can use it."""
        with self._lock:
            if self._claims.get(claim.key) is claim:
                del self._claims[claim.key]

    def restore(self, key: str, digest: bytes, send_key: int, expires: float) -> None:
        with self._lock:
            claim = Claim(key, digest, expires)
            claim.send_key = send_key
            self._claims[key] = claim
            self._order.append(claim)

    def live(self, now: float) -> list[Claim]:
        with self._lock:
            self._expire(now)
            return [c for c in self._claims.values() if c.send_key is not None]

    def _expire(self, now: float) -> None:
        order = self._order
        while order and (order[0].expires <= now or len(self._claims) > self.max_keys):
            claim = order.popleft()
            if self._claims.get(claim.key) is claim:
                del self._claims[claim.key]
