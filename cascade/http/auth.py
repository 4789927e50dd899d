"""API keys with scopes, and recipient tokens for the in-app inbox.

Owns who may call what. A route declares what it needs (`READ`, `WRITE`,
`EVENTS`, `ADMIN`, or None for the public operational endpoints); a key's
scope grants a set of needs (API.md § Auth). Invariants: a missing, malformed
or unknown key is 401 with `WWW-Authenticate: Bearer`; a known key without
the need is 403; keys are looked up by their SHA-256, so lookup time says
nothing about how much of a key was right; a recipient token is compared
with `hmac.compare_digest` and is valid for its own recipient only. With no
keys configured nothing is checked (server.py then listens on loopback only).
"""

from __future__ import annotations

import hashlib
import hmac

from aiohttp import web

from ..config import AuthSettings
from .errors import ApiError

__all__ = ["ADMIN", "EVENTS", "GRANTS", "READ", "WRITE", "Authorizer", "recipient_token"]

READ, WRITE, EVENTS, ADMIN = "read", "write", "events", "admin"

GRANTS: dict[str, frozenset[str]] = {
    "admin": frozenset({READ, WRITE, EVENTS, ADMIN}),
    "send": frozenset({READ, WRITE, EVENTS}),
    "events": frozenset({EVENTS}),
    "read": frozenset({READ}),
}
_NEEDED_SCOPES = {need: sorted(s for s, g in GRANTS.items() if need in g) for need in (READ, WRITE, EVENTS, ADMIN)}
_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="cascade"'}


def recipient_token(secret: str, recipient_id: str) -> str:
    """hex(HMAC-SHA256(inbox_secret, recipientId)): what an app hands its user's inbox."""
    return hmac.new(secret.encode(), recipient_id.encode(), hashlib.sha256).hexdigest()


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).digest()


class Authorizer:
    """Checks one request against the configured keys and inbox secret."""

    def __init__(self, settings: AuthSettings) -> None:
        self._scopes = {_digest(k): scope for k, scope in settings.api_keys.items()}
        self._secret = settings.inbox_secret

    @property
    def enabled(self) -> bool:
        return bool(self._scopes)

    def check(self, request: web.Request, need: str, recipient_route: bool = False) -> None:
        """Return when the request may proceed; raise ApiError 401/403 otherwise."""
        token_refused = False
        if recipient_route and self._secret is not None:
            token = request.headers.get("X-Recipient-Token")
            if token is not None:
                rid = request.match_info.get("id", "")
                expected = recipient_token(self._secret, rid).encode()
                if hmac.compare_digest(expected, token.strip().lower().encode("utf-8", "surrogateescape")):
                    return
                token_refused = True
        header = request.headers.get("Authorization")
        if header is None:
            if token_refused:
                raise ApiError(403, "forbidden", "X-Recipient-Token is not valid for recipient "
                               f"{request.match_info.get('id', '')!r}; a token opens its own recipient's inbox only")
            raise ApiError(401, "unauthorized", "missing API key: send 'Authorization: Bearer <key>'",
                           headers=_CHALLENGE)
        scheme, _, key = header.strip().partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            raise ApiError(401, "unauthorized", "the Authorization header must be 'Bearer <key>'", headers=_CHALLENGE)
        scope = self._scopes.get(_digest(key.strip()))
        if scope is None:
            raise ApiError(401, "unauthorized", "unknown API key", headers=_CHALLENGE)
        if need not in GRANTS[scope]:
            raise ApiError(403, "forbidden", f"an API key with scope {scope!r} may not {request.method} "
                           f"{request.path}; this needs scope {' or '.join(_NEEDED_SCOPES[need])}")
