"""Recipients: addresses, time zone and per-channel preferences.

A recipient lives on the shard of its hash slot, beside its sends and its
in-app inbox. Validation is strict about shapes and lenient about formats
(an email needs an @, a phone number digits), as providers know best; Web
Push subscriptions are checked closely (an https endpoint, keys of the
right length), since a bad one can only fail later, at every delivery.
Nothing here does I/O: `zoneinfo` reads the system's tz database once per
zone name and caches it.
"""

from __future__ import annotations

import base64
import binascii
import re
import zoneinfo
from collections.abc import Iterable
from functools import lru_cache
from typing import Any
from urllib.parse import urlsplit

from .channels import CHANNELS
from .errors import Detail, InvalidInput

__all__ = ["MAX_WEB_PUSH", "RECIPIENT_ID", "Recipient", "RecipientUpdate", "WebPushSubscription",
           "validate_recipient", "without_subscriptions", "zone"]

RECIPIENT_ID = re.compile(r"[^\s/]{1,128}")
MAX_WEB_PUSH = 20  # subscriptions a recipient: a browser or device each, so a handful in practice
_PHONE = re.compile(r"\+?[0-9][0-9 ().-]{2,30}")
_FIELDS = ("email", "phone", "pushTokens", "webPush", "timezone", "preferences")
_LOOPBACK = frozenset({"127.0.0.1", "::1", "localhost"})
_B64URL = re.compile(r"[A-Za-z0-9_-]+={0,2}")

# (endpoint, p256dh, auth): the keys as the browser gave them (base64url)
WebPushSubscription = tuple[str, str, str]


@lru_cache(maxsize=1)
def _iana_names() -> frozenset[str]:
    """Zone names of the IANA database, without the files a tz directory
    also holds that are not zones of it: "localtime" (this machine's own),
    "posixrules", "Factory", and the "posix/" and "right/" (leap-second) copies."""
    return frozenset(n for n in zoneinfo.available_timezones()
                     if n not in ("localtime", "posixrules", "Factory") and not n.startswith(("posix/", "right/")))


@lru_cache(maxsize=1024)
def zone(name: str) -> zoneinfo.ZoneInfo | None:
    """The IANA time zone `name`, or None if there is no such zone."""
    if name not in _iana_names():
        return None
    try:
        return zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):
        return None


class Recipient:
    __slots__ = ("_view", "email", "id", "inbox", "mark", "phone", "preferences", "push_tokens", "time_zone",
                 "web_push")

    def __init__(self, rid: str, email: str | None = None, phone: str | None = None,
                 push_tokens: tuple[str, ...] = (), preferences: dict[str, bool] | None = None,
                 web_push: tuple[WebPushSubscription, ...] = (), time_zone: str | None = None) -> None:
        self.id = rid
        self.email = email
        self.phone = phone
        self.push_tokens = push_tokens
        self.web_push = web_push
        self.time_zone = time_zone  # as given; None: never set (UTC)
        self.preferences = preferences or {}
        self._view: dict[str, Any] | None = None
        self.mark = 0  # which snapshot has written this recipient (the shard's business)
        self.inbox: list[Any] | None = None  # sends with an in-app message, oldest first; see inbox.py

    @property
    def timezone(self) -> str:
        """The recipient's IANA time zone name; "UTC" unless one was set."""
        return self.time_zone or "UTC"

    def unreachable(self, channel: str) -> str | None:
        """Why `channel` cannot reach this recipient ("no_address",
        "opted_out"), or None when it can. A push step needs a push token
        or a Web Push subscription: which one counts is the provider's
        business (`webpush` fails a step with no subscription)."""
        if self.preferences.get(channel) is False:
            return "opted_out"
        if channel == "inapp":
            return None
        if channel == "push":
            return None if self.push_tokens or self.web_push else "no_address"
        if channel == "email":
            return None if self.email else "no_address"
        return None if self.phone else "no_address"

    def view(self) -> dict[str, Any]:
        """The API view; shared between calls until the recipient changes, so
        treat it as read-only."""
        if self._view is not None:
            return self._view
        out: dict[str, Any] = {"id": self.id}
        if self.email is not None:
            out["email"] = self.email
        if self.phone is not None:
            out["phone"] = self.phone
        if self.push_tokens:
            out["pushTokens"] = list(self.push_tokens)
        if self.web_push:
            out["webPush"] = _subscription_json(self.web_push)
        if self.time_zone is not None:
            out["timezone"] = self.time_zone
        out["preferences"] = dict(self.preferences)
        self._view = out
        return out


def _b64url(text: Any) -> bytes | None:
    """The bytes base64url `text` holds (padding optional), or None."""
    if not isinstance(text, str) or len(text) > 256 or not _B64URL.fullmatch(text):
        return None
    bare = text.rstrip("=")
    try:
        return base64.urlsafe_b64decode(bare + "=" * (-len(bare) % 4))
    except (binascii.Error, ValueError):
        return None


def _endpoint_problem(endpoint: Any) -> str | None:
    if not isinstance(endpoint, str) or len(endpoint) > 2048:
        return "an endpoint must be a URL of at most 2048 characters"
    try:
        parts = urlsplit(endpoint)
        host = parts.hostname
        parts.port  # noqa: B018 (raises ValueError for a bad port)
    except ValueError:
        return f"endpoint {endpoint!r} is not a URL"
    if not host or any(c in endpoint for c in " \r\n\t"):
        return f"endpoint {endpoint!r} is not an absolute URL"
    if parts.scheme == "https" or (parts.scheme == "http" and host in _LOOPBACK):
        return None
    return f"endpoint {endpoint!r} must be https:// (http:// only for 127.0.0.1, ::1 or localhost)"


def _validate_web_push(subs: Any, path: str, errs: list[Detail]) -> None:
    if not isinstance(subs, list):
        errs.append((path, "webPush must be a list of subscriptions {endpoint, keys: {p256dh, auth}}"))
        return
    if len(subs) > MAX_WEB_PUSH:
        errs.append((path, f"webPush holds {len(subs)} subscriptions; at most {MAX_WEB_PUSH} are allowed"))
        return
    seen: set[str] = set()
    for i, sub in enumerate(subs):
        at = f"{path}[{i}]"
        if not isinstance(sub, dict):
            errs.append((at, "a subscription must be an object {endpoint, keys: {p256dh, auth}}"))
            continue
        for k in sub:
            if k not in ("endpoint", "keys", "expirationTime"):
                errs.append((f"{at}.{k}", f"unknown field {k!r}; allowed: endpoint, keys, expirationTime"))
        problem = _endpoint_problem(sub.get("endpoint"))
        if problem:
            errs.append((f"{at}.endpoint", problem))
        elif sub["endpoint"] in seen:
            errs.append((f"{at}.endpoint", f"endpoint {sub['endpoint']!r} is listed twice"))
        else:
            seen.add(sub["endpoint"])
        keys = sub.get("keys")
        if not isinstance(keys, dict):
            errs.append((f"{at}.keys", "keys must be an object {p256dh, auth}"))
            continue
        for k in keys:
            if k not in ("p256dh", "auth"):
                errs.append((f"{at}.keys.{k}", f"unknown field {k!r}; allowed: p256dh, auth"))
        p256dh, auth = keys.get("p256dh"), keys.get("auth")
        key = _b64url(p256dh)
        if key is None or len(key) != 65 or key[0] != 4:
            errs.append((f"{at}.keys.p256dh",
                         "p256dh must be base64url of an uncompressed P-256 public key (65 bytes)"))
        elif not _on_p256(key):
            errs.append((f"{at}.keys.p256dh", "p256dh is not a point of the P-256 curve: not a browser's key"))
        secret = _b64url(auth)
        if secret is None or len(secret) != 16:
            errs.append((f"{at}.keys.auth", "auth must be base64url of 16 bytes"))


# P-256 (secp256r1): y^2 = x^3 - 3x + b over the prime field p
_P256_P = 2**256 - 2**224 + 2**192 + 2**96 - 1
_P256_B = 0x5AC635D8AA3A93E7B3EBBD55769886BC651D06B0CC53B0F63BCE3C3E27D2604B


def _on_p256(key: bytes) -> bool:
    """Whether an uncompressed point (0x04 || x || y) lies on the curve: a
    key that does not would fail every encryption to it."""
    x, y = int.from_bytes(key[1:33], "big"), int.from_bytes(key[33:], "big")
    p = _P256_P
    return 0 <= x < p and 0 <= y < p and (y * y - (x * x * x - 3 * x + _P256_B)) % p == 0


def validate_recipient(rid: Any, body: Any, path: str = "$") -> list[Detail]:
    errs: list[Detail] = []
    id_path = f"{path}.id" if path != "$" else "$.id"
    if not isinstance(rid, str) or not RECIPIENT_ID.fullmatch(rid):
        errs.append((id_path, f"recipient id {rid!r} must be 1-128 characters without spaces or '/'"))
    if not isinstance(body, dict):
        return errs + [(path, "a recipient must be a JSON object")]
    for k in body:
        if k not in _FIELDS and k != "id":
            errs.append((f"{path}.{k}", f"unknown field {k!r}; allowed: id, {', '.join(_FIELDS)}"))
    email = body.get("email")
    if email is not None and (not isinstance(email, str) or "@" not in email or len(email) > 320):
        errs.append((f"{path}.email", f"email {email!r} is not an email address"))
    phone = body.get("phone")
    if phone is not None and (not isinstance(phone, str) or not _PHONE.fullmatch(phone)):
        errs.append((f"{path}.phone", f"phone {phone!r} is not a phone number (digits, optional leading +)"))
    tokens = body.get("pushTokens")
    if tokens is not None:
        if not isinstance(tokens, list):
            errs.append((f"{path}.pushTokens", "pushTokens must be a list of strings"))
        else:
            for i, t in enumerate(tokens):
                if not isinstance(t, str) or not t:
                    errs.append((f"{path}.pushTokens[{i}]", "a push token must be a non-empty string"))
    if body.get("webPush") is not None:
        _validate_web_push(body["webPush"], f"{path}.webPush", errs)
    tz = body.get("timezone")
    if tz is not None and (not isinstance(tz, str) or len(tz) > 64 or zone(tz) is None):
        errs.append((f"{path}.timezone",
                     f"timezone {tz!r} is not a known IANA time zone (e.g. Europe/Berlin, America/New_York, UTC)"))
    prefs = body.get("preferences")
    if prefs is not None:
        if not isinstance(prefs, dict):
            errs.append((f"{path}.preferences", "preferences must be an object of channel: true|false"))
        else:
            for ch, on in prefs.items():
                if ch not in CHANNELS:
                    errs.append((f"{path}.preferences.{ch}", f"channel {ch!r} is not one of {', '.join(CHANNELS)}"))
                elif not isinstance(on, bool):
                    errs.append((f"{path}.preferences.{ch}", "a preference must be true or false"))
    return errs


def _subscription_json(subs: Iterable[WebPushSubscription]) -> list[dict[str, Any]]:
    return [{"endpoint": e, "keys": {"p256dh": p, "auth": a}} for e, p, a in subs]


def without_subscriptions(rcpt: Recipient, endpoints: Iterable[str]) -> RecipientUpdate | None:
    """The update that drops `endpoints` from the recipient's webPush (a push
    service answered 404/410 for them), or None if it lists none of them.
    Decided on the recipient's shard against its current subscriptions, so a
    PUT in between is never undone."""
    gone = set(endpoints)
    kept = [sub for sub in rcpt.web_push if sub[0] not in gone]
    if len(kept) == len(rcpt.web_push):
        return None
    return RecipientUpdate.trusted({"webPush": _subscription_json(kept)})


def _subscriptions(subs: Any) -> tuple[WebPushSubscription, ...]:
    return tuple((s["endpoint"], s["keys"]["p256dh"], s["keys"]["auth"]) for s in subs or ())


class RecipientUpdate:
    """A validated recipient body, applied on the recipient's shard."""

    __slots__ = ("fields",)

    def __init__(self, rid: str, body: dict[str, Any], path: str = "$") -> None:
        errs = validate_recipient(rid, body, path)
        if errs:
            raise InvalidInput(f"recipient is invalid: {errs[0][1]}", errs)
        fields = {k: v for k, v in body.items() if k != "id"}
        if fields.get("webPush"):  # as stored: a subscription's expirationTime is the browser's business
            fields["webPush"] = [{"endpoint": s["endpoint"], "keys": {"p256dh": s["keys"]["p256dh"],
                                                                      "auth": s["keys"]["auth"]}}
                                 for s in fields["webPush"]]
        self.fields = fields

    @classmethod
    def trusted(cls, fields: dict[str, Any]) -> RecipientUpdate:
        """Fields validated before (journal replay)."""
        update = cls.__new__(cls)
        update.fields = dict(fields)
        return update

    def merge_into(self, rcpt: Recipient, replace: bool = False) -> None:
        """PUT replaces every field; a send's inline recipient only sets those it names."""
        f = self.fields
        rcpt._view = None
        if replace or "email" in f:
            rcpt.email = f.get("email")
        if replace or "phone" in f:
            rcpt.phone = f.get("phone")
        if replace or "pushTokens" in f:
            rcpt.push_tokens = tuple(f.get("pushTokens") or ())
        if replace or "webPush" in f:
            rcpt.web_push = _subscriptions(f.get("webPush"))
        if replace or "timezone" in f:
            rcpt.time_zone = f.get("timezone")
        if replace or "preferences" in f:
            rcpt.preferences = dict(f.get("preferences") or {})
