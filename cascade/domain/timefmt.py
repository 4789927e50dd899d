"""RFC 3339 UTC timestamps with milliseconds, as API.md wants them."""

from __future__ import annotations

import datetime as _dt

__all__ = ["iso", "parse_iso"]

_UTC = _dt.timezone.utc


def iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    d = _dt.datetime.fromtimestamp(ts, _UTC)
    return d.strftime("%Y-%m-%dT%H:%M:%S.") + f"{d.microsecond // 1000:03d}Z"


def parse_iso(text: str) -> float:
    """Seconds since the epoch; raises ValueError naming the text."""
    try:
        d = _dt.datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except (ValueError, AttributeError, TypeError):
        raise ValueError(f"{text!r} is not an RFC 3339 timestamp like 2026-11-27T10:00:00.000Z") from None
    if d.tzinfo is None:
        raise ValueError(f"{text!r} has no time zone; use Z or an offset")
    return d.timestamp()
