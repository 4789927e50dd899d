"""A rate for new sends that keeps the event loop short of saturation.

Shedding on loop lag alone (supervisor.behind_reason) lets the loop run at
its limit: sends are refused only once work already waits `shed_lag_s`,
and every signal waits that long with them. Worse, a send accepted now
costs the loop again seconds later (its escalations, their webhooks and
the signals they draw), so lag-triggered shedding swings between refusing
everything and taking too much. The pacer keeps an admitted-send rate
instead, adjusted every `PERIOD_S` against a lower lag target: over it,
the rate drops to a fraction of what was admitted (multiplicative
decrease); under it, it grows a few percent a period, and is lifted
altogether once demand stays well below it. Sends over the rate get the
same 503 + Retry-After as any shed send. Not thread-safe: the event loop
owns it (the lag probe feeds it, the front door asks it).
"""

from __future__ import annotations

import time
from typing import Callable

__all__ = ["SendPacer"]

PERIOD_S = 0.25
DECREASE = 0.85  # of the rate admitted in a period whose loop lag went over the target
INCREASE = 1.04  # a period, while under the target
FLOOR = 50.0  # sends/s: never paced below this
BURST_S = 0.05  # tokens kept: this many seconds of the rate


class SendPacer:
    def __init__(self, target_lag_s: float, monotonic: Callable[[], float] = time.monotonic) -> None:
        self.target_lag_s = target_lag_s
        self.rate: float | None = None  # sends/s; None: not paced
        self.refused = 0  # since start (for /metrics)
        self._monotonic = monotonic
        self._begun = monotonic()
        self._peak = 0.0
        self._admitted = 0
        self._refused = 0
        self._tokens = 0.0
        self._filled = self._begun
        self._demand: float | None = None  # sends/s admitted, smoothed over periods

    def observe(self, lag_s: float) -> None:
        """One loop-lag probe."""
        if lag_s > self._peak:
            self._peak = lag_s
        now = self._monotonic()
        if now - self._begun >= PERIOD_S:
            self._adjust(now)

    def refuse(self) -> bool:
        """Whether a new send must be refused now (counted as admitted otherwise)."""
        if self.target_lag_s <= 0:
            return False
        if self.rate is not None:
            now = self._monotonic()
            self._tokens = min(self.rate * BURST_S, self._tokens + (now - self._filled) * self.rate)
            self._filled = now
            if self._tokens < 1.0:
                self._refused += 1
                self.refused += 1
                return True
            self._tokens -= 1.0
        self._admitted += 1
        return False

    def _adjust(self, now: float) -> None:
        admitted = self._admitted / (now - self._begun)
        # Smoothed: one period's count is low after a stall (the loop admitted nothing while it stood).
        self._demand = admitted if self._demand is None else 0.7 * self._demand + 0.3 * admitted
        if self.target_lag_s > 0 and self._peak > self.target_lag_s:
            base = self._demand if self.rate is None else min(self.rate, max(self._demand, admitted))
            self.rate = max(FLOOR, DECREASE * base)
        elif self.rate is not None:
            self.rate *= INCREASE
            if not self._refused and self.rate > 1.5 * admitted:
                self.rate = None  # demand is well below it: stop pacing
        self._begun, self._peak, self._admitted, self._refused = now, 0.0, 0, 0
