"""A Web Push service in the test process (aiohttp): it checks each push
message the way a browser vendor's service does — the VAPID JWT (ES256
signature with the key in `k`, `aud` = its own origin, `exp` in the future
and at most 24 h away, `sub`) — and decrypts the aes128gcm payload with the
subscription's private key (http_ece), which only the browser would hold.
Statuses can be scripted per subscription (410, 429 then 201, ...)."""

from __future__ import annotations

import base64
import json
import os
import time
from collections import defaultdict, deque
from typing import Any

import http_ece
from aiohttp import web
from aiohttp.test_utils import TestServer
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

__all__ = ["PushService", "b64", "new_vapid_key"]


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def new_vapid_key() -> tuple[str, str]:
    """(private key as PEM, public key as base64url: the browser's applicationServerKey)."""
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()).decode()
    public = key.public_key().public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    return pem, b64(public)


class PushService:
    def __init__(self, vapid_public: str, subject: str) -> None:
        self.vapid_public = vapid_public
        self.subject = subject
        self.keys: dict[str, tuple[ec.EllipticCurvePrivateKey, bytes]] = {}  # subscription -> (key, auth)
        self.received: dict[str, list[Any]] = defaultdict(list)  # subscription -> decrypted payloads
        self.answers: dict[str, deque[int]] = defaultdict(deque)  # scripted statuses; then 201
        self.posts: dict[str, int] = defaultdict(int)
        self.problems: list[str] = []
        self.server: TestServer | None = None

    async def start(self) -> PushService:
        app = web.Application()
        app.router.add_post("/push/{sid}", self._handle)
        self.server = TestServer(app, host="127.0.0.1")
        await self.server.start_server()
        return self

    async def close(self) -> None:
        if self.server is not None:
            await self.server.close()

    @property
    def origin(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.port}"

    def subscribe(self, sid: str) -> dict[str, Any]:
        """A new subscription as the browser's PushSubscription.toJSON() gives it."""
        key = ec.generate_private_key(ec.SECP256R1())
        auth = os.urandom(16)
        self.keys[sid] = (key, auth)
        public = key.public_key().public_bytes(serialization.Encoding.X962,
                                               serialization.PublicFormat.UncompressedPoint)
        return {"endpoint": f"{self.origin}/push/{sid}", "keys": {"p256dh": b64(public), "auth": b64(auth)}}

    async def _handle(self, request: web.Request) -> web.Response:
        sid = request.match_info["sid"]
        self.posts[sid] += 1
        body = await request.read()
        problem = self._check(request)
        if problem:
            self.problems.append(f"{sid}: {problem}")
            return web.Response(status=403, text=problem)
        status = self.answers[sid].popleft() if self.answers[sid] else 201
        if status == 201:
            key, auth = self.keys[sid]
            plain = http_ece.decrypt(body, private_key=key, auth_secret=auth, version="aes128gcm")
            self.received[sid].append(json.loads(plain))
        headers = {"Retry-After": "0"} if status == 429 else {}
        return web.Response(status=status, headers=headers)

    def _check(self, request: web.Request) -> str | None:
        if request.headers.get("Content-Encoding") != "aes128gcm":
            return f"Content-Encoding {request.headers.get('Content-Encoding')!r}"
        if not request.headers.get("TTL", "").isdigit():
            return "no TTL"
        scheme, _, params = request.headers.get("Authorization", "").partition(" ")
        fields = dict(p.split("=", 1) for p in params.split(",") if "=" in p)
        if scheme != "vapid" or set(fields) != {"t", "k"}:
            return "Authorization is not 'vapid t=...,k=...'"
        if fields["k"] != self.vapid_public:
            return "k is not the application server's key"
        head, claims_b64, sig = fields["t"].split(".")
        if json.loads(unb64(head)) != {"typ": "JWT", "alg": "ES256"}:
            return "JWT header"
        raw = unb64(sig)
        public = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), unb64(fields["k"]))
        try:
            public.verify(encode_dss_signature(int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big")),
                          f"{head}.{claims_b64}".encode(), ec.ECDSA(hashes.SHA256()))
        except InvalidSignature:
            return "the JWT signature does not verify"
        claims = json.loads(unb64(claims_b64))
        now = time.time()
        if claims.get("aud") != self.origin:
            return f"aud {claims.get('aud')!r} is not {self.origin!r}"
        if not now < claims.get("exp", 0) <= now + 86400:
            return f"exp {claims.get('exp')!r} is not within the next 24 h"
        if claims.get("sub") != self.subject:
            return f"sub {claims.get('sub')!r}"
        return None
