"""Quiet hours (API.md rule 12): when a step of a listed channel may not
fire, in the recipient's own wall-clock time.

Hours are local wall times, so their length in absolute time changes on the
nights clocks change: a deferral from 23:00 to 08:00 lasts 9 hours on most
nights, 8 or 10 across a daylight-saving change. `until` answers the
absolute instant the quiet hours end. A wall time that does not exist that
day (inside a spring-forward gap) resolves as `zoneinfo` does with fold=0:
read with the offset before the change, so 02:30 on a night that jumps
from 02:00 to 03:00 is 03:30 after it.
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass

from .recipients import zone

__all__ = ["QuietHours", "parse_hhmm"]

_DAY = 24 * 60


def parse_hhmm(text: object) -> int | None:
    """Minutes after midnight of a 24-hour "HH:MM", or None if it is not one."""
    if not isinstance(text, str) or len(text) != 5 or text[2] != ":":
        return None
    hh, mm = text[:2], text[3:]
    if not (hh.isascii() and mm.isascii() and hh.isdigit() and mm.isdigit()):  # not "²²" or "２２"
        return None
    h, m = int(hh), int(mm)
    return h * 60 + m if h < 24 and m < 60 else None


@dataclass(frozen=True, slots=True)
class QuietHours:
    start: int  # minutes after local midnight
    end: int
    channels: frozenset[str]

    def until(self, now: float, tz_name: str) -> float | None:
        """When the quiet hours that `now` falls in end, or None if it falls in none."""
        if self.start == self.end:
            return None  # an empty span: never quiet
        tz: _dt.tzinfo = zone(tz_name) or _dt.timezone.utc  # names were checked when the recipient was put
        local = _dt.datetime.fromtimestamp(now, tz)
        minute = local.hour * 60 + local.minute
        wraps = self.start > self.end  # e.g. 22:00 to 08:00
        if wraps:
            inside = minute >= self.start or minute < self.end
        else:
            inside = self.start <= minute < self.end
        if not inside:
            return None
        day = local.date()
        if wraps and minute >= self.start:
            day += _dt.timedelta(days=1)  # the quiet hours end tomorrow morning
        end = _dt.datetime(day.year, day.month, day.day, self.end // 60, self.end % 60, tzinfo=tz)
        until = end.timestamp()
        return until if until > now else None

    def view(self) -> dict[str, object]:
        return {"start": f"{self.start // 60:02d}:{self.start % 60:02d}",
                "end": f"{self.end // 60:02d}:{self.end % 60:02d}", "channels": sorted(self.channels)}
