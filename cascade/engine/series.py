"""The stats series: per-minute counts for `GET /v1/stats/series`, pure.

Owns the columns, a bounded ring of minute buckets (`KEEP_MINUTES`, more
than 24 hours), the view of a window as points of `step` seconds, and the
bytes the ring is saved as. No clock, no engine, no I/O: the sampler
(series_sampler.py) feeds it deltas of the engine's cumulative counters.

Columns (every count is of the interval the bucket covers):
- `sends.started`, and `sends.<outcome>` for each outcome a send finishes
  with (stopped, completed, cancelled, failed, throttled);
- `<channel>.<count>` for each channel: requested (the step fired),
  delivered, viewed, clicked (the signals, each at most once a message),
  failed (refused by its provider or reported failed);
- `late.<i>`: timers that fired, by lateness bucket (shard_stats.py).
A minute is `int(t // 60)` of the engine's clock.
"""

from __future__ import annotations

import math
from typing import Any

import msgpack

from ..domain.channels import CHANNEL_SIGNALS, CHANNELS
from ..domain.timefmt import iso
from .shard_stats import LATENESS_BUCKETS

__all__ = ["COLUMNS", "DURABLE_COLUMNS", "KEEP_MINUTES", "MAX_MINUTES", "OUTCOMES", "Reading", "SeriesRing"]

KEEP_MINUTES = 1500  # 25 hours: a 24-hour window at any step still finds every bucket it covers
MAX_MINUTES = 1440
OUTCOMES = ("stopped", "completed", "cancelled", "failed", "throttled")
CHANNEL_COUNTS = ("requested", "delivered", "viewed", "clicked", "failed")
COLUMNS: tuple[str, ...] = (
    "sends.started", *(f"sends.{o}" for o in OUTCOMES),
    *(f"{c}.{k}" for c in CHANNELS for k in CHANNEL_COUNTS),
    *(f"late.{i}" for i in range(len(LATENESS_BUCKETS) + 1)),
)
_INDEX = {name: i for i, name in enumerate(COLUMNS)}
_LATE = _INDEX["late.0"]
# Columns read from counters a recovery restores (the sends' and channels'); the lateness columns
# come from shard statistics, which start again from zero with the process.
DURABLE_COLUMNS = range(_LATE)
Reading = tuple[float, list[int]]  # (clock time, the cumulative count of each column)
_FORMAT = 1


class SeriesRing:
    """Minute buckets, at most `KEEP_MINUTES` behind the newest."""

    def __init__(self) -> None:
        self._buckets: dict[int, list[int]] = {}
        self._newest: int | None = None

    def __len__(self) -> int:
        return len(self._buckets)

    def add(self, minute: int, delta: list[int]) -> None:
        """Count `delta` (one number a column) into `minute`."""
        if not any(delta):
            return
        if self._newest is not None and minute <= self._newest - KEEP_MINUTES:
            return  # older than anything kept
        bucket = self._buckets.get(minute)
        if bucket is None:
            bucket = self._buckets[minute] = [0] * len(COLUMNS)
        for i, n in enumerate(delta):
            bucket[i] += n
        if self._newest is None or minute > self._newest:
            self._newest = minute
            floor = minute - KEEP_MINUTES
            for old in [m for m in self._buckets if m <= floor]:
                del self._buckets[old]

    def points(self, now: float, minutes: int, step: int) -> dict[str, Any]:
        """The window of `minutes` up to now as points of `step` seconds
        (a multiple of 60), aligned to multiples of `step` since the epoch,
        oldest first; the last is the interval in progress."""
        per = step // 60
        end = (math.floor(now / step) + 1) * step
        n = max(1, math.ceil(minutes * 60 / step))
        first = end - n * step
        points = []
        for k in range(n):
            start_minute = (first + k * step) // 60
            acc = [0] * len(COLUMNS)
            for m in range(start_minute, start_minute + per):
                bucket = self._buckets.get(m)
                if bucket is not None:
                    for i, v in enumerate(bucket):
                        acc[i] += v
            points.append(_point(first + k * step, acc))
        return {"step": step, "from": iso(first), "to": iso(end), "points": points}

    # -- persistence ---------------------------------------------------------
    def encode(self, reading: Reading | None = None) -> bytes:
        """The ring as bytes, columns named, so a later layout can still read it. `reading`: the
        cumulative counts the ring is complete up to, and their clock time (series_sampler.py)."""
        saved: dict[str, Any] = {"format": _FORMAT, "columns": list(COLUMNS),
                                 "buckets": [[m, b] for m, b in sorted(self._buckets.items())]}
        if reading is not None:
            saved["reading"] = [reading[0], list(reading[1])]
        data: bytes = msgpack.packb(saved)
        return data

    def load(self, data: bytes) -> tuple[float, list[int | None]] | None:
        """Add the buckets of `encode`'s bytes, column by column name (names
        this layout does not know are left out); answer their reading, if
        they have one (None for a column it did not have). Raises ValueError
        when the bytes are not a series."""
        try:
            saved = msgpack.unpackb(data)
            if not isinstance(saved, dict) or saved.get("format") != _FORMAT:
                raise ValueError(f"format {saved.get('format') if isinstance(saved, dict) else None!r} is not "
                                 f"{_FORMAT}")
            where = [_INDEX.get(name) for name in saved["columns"]]
            for minute, values in saved["buckets"]:
                delta = [0] * len(COLUMNS)
                for i, v in zip(where, values):
                    if i is not None:
                        delta[i] += int(v)
                self.add(int(minute), delta)
            if saved.get("reading") is None:
                return None
            at, values = saved["reading"]
            counts: list[int | None] = [None] * len(COLUMNS)
            for i, v in zip(where, values):
                if i is not None:
                    counts[i] = int(v)
            return float(at), counts
        except (ValueError, KeyError, TypeError, msgpack.UnpackException) as exc:
            raise ValueError(f"not a saved stats series: {exc}") from None


def _quantile(late: list[int], q: float) -> float | None:
    """The upper bound of the lateness bucket the q-quantile falls in (at
    most that late); the top bound for timers later than every bound."""
    total = sum(late)
    if not total:
        return None
    rank = math.ceil(q * total)
    acc = 0
    for i, n in enumerate(late):
        acc += n
        if acc >= rank:
            return LATENESS_BUCKETS[min(i, len(LATENESS_BUCKETS) - 1)]
    return LATENESS_BUCKETS[-1]


def _point(at: int, acc: list[int]) -> dict[str, Any]:
    def col(name: str) -> int:
        return acc[_INDEX[name]]

    channels = {}
    for c in CHANNELS:
        viewed = col(f"{c}.viewed")
        clicked = col(f"{c}.clicked")
        channels[c] = {"requested": col(f"{c}.requested"), "delivered": col(f"{c}.delivered"),
                       "viewed": viewed if "viewed" in CHANNEL_SIGNALS[c] else None, "clicked": clicked,
                       "engaged": viewed + clicked, "failed": col(f"{c}.failed")}
    late = acc[_LATE:]
    return {"at": iso(at), "sendsStarted": col("sends.started"),
            "sendsFinished": {o: col(f"sends.{o}") for o in OUTCOMES},
            "channels": channels,
            "timerLateness": {"fired": sum(late), "p50": _quantile(late, 0.5), "p99": _quantile(late, 0.99)}}
