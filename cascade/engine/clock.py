"""Injected time. Nothing under `engine/` reads `time.time()` itself.

Times are absolute wall-clock seconds (floats) so deadlines survive a
restart. `ManualClock` only moves when told to; the engine's
`advance()` walks its timers in deadline order as it moves it.
`ScaledClock` runs `rate` times faster than real time from a start point.
"""

from __future__ import annotations

import threading
import time
from typing import Callable, Protocol

__all__ = ["Clock", "ManualClock", "RealClock", "ScaledClock"]


class Clock(Protocol):
    mode: str

    def now(self) -> float: ...


class RealClock:
    mode = "real"

    def now(self) -> float:
        return time.time()


class ManualClock:
    """A clock that moves only through `advance` or `set`; never backwards."""

    mode = "manual"

    def __init__(self, start: float = 0.0) -> None:
        self._now = float(start)
        self._lock = threading.Lock()

    def now(self) -> float:
        return self._now

    def set(self, when: float) -> None:
        with self._lock:
            if when < self._now:
                raise ValueError("time can't go backwards")
            self._now = float(when)

    def restore(self, when: float) -> None:
        """Resume at a persisted time (recovery only; may go backwards)."""
        with self._lock:
            self._now = float(when)

    def advance(self, seconds: float) -> float:
        if seconds < 0:
            raise ValueError("time can't go backwards")
        with self._lock:
            self._now += seconds
            return self._now


class ScaledClock:
    """`rate` clock seconds per real second, counted from `start`."""

    mode = "scaled"

    def __init__(self, rate: float, start: float | None = None,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        if rate <= 0:
            raise ValueError(f"clock rate must be positive, got {rate}")
        self.rate = float(rate)
        self._monotonic = monotonic  # injected, so tests can drive real time
        self._origin_real = monotonic()
        self._origin = time.time() if start is None else float(start)

    def now(self) -> float:
        return self._origin + (self._monotonic() - self._origin_real) * self.rate

    def restore(self, when: float) -> None:
        """Resume at a persisted time (recovery only)."""
        self._origin_real = self._monotonic()
        self._origin = float(when)
