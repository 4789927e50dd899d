"""Recipients: addresses and per-channel preferences.

A recipient lives on the shard of its hash slot, beside its sends and its
in-app inbox. Validation is strict about shapes and lenient about formats
(an email needs an @, a phone number digits), as providers know best.
"""

from __future__ import annotations

import re
from typing import Any

from .channels import CHANNELS
from .errors import Detail, InvalidInput

__all__ = ["RECIPIENT_ID", "Recipient", "RecipientUpdate", "validate_recipient"]

RECIPIENT_ID = re.compile(r"[^\s/]{1,128}")
_PHONE = re.compile(r"\+?[0-9][0-9 ().-]{2,30}")
_FIELDS = ("email", "phone", "pushTokens", "preferences")


class Recipient:
    __slots__ = ("id", "email", "phone", "push_tokens", "preferences", "inbox", "_view", "mark")

    def __init__(self, rid: str, email: str | None = None, phone: str | None = None,
                 push_tokens: tuple[str, ...] = (), preferences: dict[str, bool] | None = None) -> None:
        self.id = rid
        self.email = email
        self.phone = phone
        self.push_tokens = push_tokens
        self.preferences = preferences or {}
        self._view: dict[str, Any] | None = None
        self.mark = 0  # which snapshot has written this recipient (the shard's business)
        self.inbox: list[Any] | None = None  # sends with an in-app message, oldest first; see inbox.py

    def unreachable(self, channel: str) -> str | None:
        """Why `channel` cannot reach this recipient ("no_address",
        "opted_out"), or None when it can."""
        if self.preferences.get(channel) is False:
            return "opted_out"
        if channel == "inapp":
            return None
        if channel == "push":
            return None if self.push_tokens else "no_address"
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
        out["preferences"] = dict(self.preferences)
        self._view = out
        return out


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


class RecipientUpdate:
    """A validated recipient body, applied on the recipient's shard."""

    __slots__ = ("fields",)

    def __init__(self, rid: str, body: dict[str, Any], path: str = "$") -> None:
        errs = validate_recipient(rid, body, path)
        if errs:
            raise InvalidInput(f"recipient is invalid: {errs[0][1]}", errs)
        self.fields = {k: v for k, v in body.items() if k != "id"}

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
        if replace or "preferences" in f:
            rcpt.preferences = dict(f.get("preferences") or {})
