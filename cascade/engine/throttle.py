"""Throttle state of one shard (API.md rule 13): when the latest sends of
each throttled template started for each recipient.

Derived from records like the rest of a shard's state: a send's
`SendStarted` adds its start, the `SendFinished(throttled)` that refuses it
takes it back, so journal replay rebuilds exactly what was live; a
snapshot carries the starts still inside their window. Only the latest
`limit` starts of a (recipient, template) can matter, so each list is
bounded by the template's limit (at most 1,000), plus the one being judged.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator

from ..domain.records import ThrottleKept
from ..domain.templates import TemplateVersion

__all__ = ["ThrottleBook"]


class ThrottleBook:
    def __init__(self) -> None:
        self._starts: dict[tuple[str, str], list[float]] = {}

    def over(self, rid: str, tpl: TemplateVersion, now: float) -> bool:
        """Whether a send of `tpl` to `rid` starting now would exceed its limit."""
        if tpl.throttle is None:
            return False
        limit, window = tpl.throttle
        starts = self._starts.get((rid, tpl.id))
        if not starts:
            return False
        since = now - window
        recent = sum(1 for at in starts[-limit:] if at > since)
        return recent >= limit

    def started(self, rid: str, tpl: TemplateVersion, at: float) -> None:
        if tpl.throttle is None:
            return
        starts = self._starts.setdefault((rid, tpl.id), [])
        starts.append(at)
        if len(starts) > tpl.throttle[0] + 1:  # + 1: the one a `refused` may take back
            del starts[0]

    def refused(self, rid: str, template: str) -> None:
        """The send that last started was throttled: it does not count."""
        starts = self._starts.get((rid, template))
        if starts:
            starts.pop()

    def records(self, now: float, window_of: Callable[[str], float]) -> Iterator[ThrottleKept]:
        """What a snapshot keeps: starts still inside their template's window."""
        for (rid, template), starts in self._starts.items():
            since = now - window_of(template)
            kept = tuple(at for at in starts if at > since)
            if kept:
                yield ThrottleKept(rid, template, kept)

    def load(self, rec: Any) -> None:
        starts = self._starts.setdefault((rec.recipient, rec.template), [])
        starts[:] = sorted({*starts, *rec.starts})
