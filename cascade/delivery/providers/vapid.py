"""VAPID (RFC 8292) for the `webpush` provider: the application server's
key and the `Authorization: vapid t=<JWT>,k=<public key>` header each push
service wants.

The JWT is signed by `py_vapid` (ES256 over `aud` = the push service's
origin, `exp`, `sub` = the configured contact) and kept per origin for half
its lifetime, so a busy channel signs once per push service every few hours
instead of once a message. Keys are read from base64url of the raw 32-byte
private scalar (what `vapid --gen` and most tutorials print), DER, or PEM.
"""

from __future__ import annotations

import base64
import binascii
import time
from collections.abc import Callable

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from py_vapid import Vapid02, VapidException  # type: ignore[import-untyped]

__all__ = ["VapidSigner", "load_vapid_key"]

_LIFETIME_S = 12 * 3600  # RFC 8292: at most 24 hours
_MAX_ORIGINS = 1024  # cached headers; push services are a handful in practice


def _b64url_decode(text: str) -> bytes:
    bare = "".join(text.split()).rstrip("=")
    return base64.urlsafe_b64decode(bare + "=" * (-len(bare) % 4))


def load_vapid_key(text: str) -> ec.EllipticCurvePrivateKey:
    """The P-256 private key in `text`; ValueError says what is wrong."""
    text = text.strip()
    try:
        if text.startswith("-----BEGIN"):
            key = serialization.load_pem_private_key(text.encode("ascii"), password=None)
        else:
            raw = _b64url_decode(text)
            if len(raw) == 32:
                key = ec.derive_private_key(int.from_bytes(raw, "big"), ec.SECP256R1())
            else:
                key = serialization.load_der_private_key(raw, password=None)
    except (ValueError, TypeError, binascii.Error, UnicodeEncodeError) as exc:
        raise ValueError("is not a P-256 private key as base64url (32 raw bytes or DER) or PEM "
                         f"({type(exc).__name__})") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP256R1):
        raise ValueError("must be an EC key on P-256 (prime256v1)")  # noqa: TRY004 (a bad setting, not a bad call)
    return key


class VapidSigner:
    """Authorization headers for push services, by origin."""

    def __init__(self, private_key: str, subject: str, clock: Callable[[], float] = time.time) -> None:
        if not subject.startswith(("mailto:", "https://")):
            raise ValueError(f"vapid_subject {subject!r} must be a mailto: or https:// URL")
        self._vapid = Vapid02(private_key=load_vapid_key(private_key))
        self.subject = subject
        self._clock = clock
        self._headers: dict[str, tuple[float, str]] = {}  # origin -> (renew after, header value)
        point = self._vapid.public_key.public_bytes(serialization.Encoding.X962,
                                                    serialization.PublicFormat.UncompressedPoint)
        self.public_key = base64.urlsafe_b64encode(point).decode("ascii").rstrip("=")  # applicationServerKey

    def authorization(self, origin: str) -> str:
        """The `Authorization` header value for a push service at `origin` ("https://host[:port]")."""
        now = self._clock()
        cached = self._headers.get(origin)
        if cached is not None and now < cached[0]:
            return cached[1]
        try:
            value = self._vapid.sign({"aud": origin, "exp": int(now) + _LIFETIME_S, "sub": self.subject})
        except VapidException as exc:
            raise ValueError(f"cannot sign for {origin!r}: {exc}") from None
        header = str(value["Authorization"])
        if len(self._headers) >= _MAX_ORIGINS:
            self._headers.clear()
        self._headers[origin] = (now + _LIFETIME_S / 2, header)
        return header
