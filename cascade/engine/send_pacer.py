"""A rate for new sends that keeps the server short of saturation.

Shedding on loop lag alone (supervisor.behind_reason) lets the server run at
its limit: sends are refused only once work already waits `shed_lag_s`,
and every signal waits that long with them. Worse, a send accepted now
costs the server again seconds later (its escalations, their webhooks and
the signals they draw), so lag-triggered shedding swings between refusing
everything and taking too much. The pacer keeps an admitted-send rate
instead, adjusted every `PERIOD_S` on two measures:

- the backlog (`Engine.backlog_s`: loop lag, a command's wait for its
  shard, a message's wait for its provider) against `target_lag_s`: over
  it, the rate drops to a fraction of what was admitted (multiplicative
  decrease). The backlog shows only once the server is saturated, and it
  shows late: at 10,000 sends/s offered to a server that takes ~3,500, a
  rate probing upwards on it alone overshot capacity by a quarter before
  the lag rose, and each overshoot held every signal for 150-350 ms.
- the CPU the process used (all its threads) against `cpu_share` of one
  core: above it the rate does not grow, and well above it, it eases
  down. One core, because this is what a process whose Python code holds
  one interpreter lock can use; CPU time climbs steadily with the load
  (measured: 0.78 of a core at 2,000 sends/s, 0.94 at 3,400, 0.99 at
  3,900) where the lag stays flat until the end, so the rate settles short
  of the edge instead of probing over it.

Under both, the rate grows a few percent a period, and is lifted
altogether once demand stays well below it. Sends over the rate get the
same 503 + Retry-After as any shed send. Not thread-safe: the event loop
owns it (the lag probe feeds it, the front door asks it).
"""

from __future__ import annotations

import time
from typing import Callable

__all__ = ["SendPacer"]

PERIOD_S = 0.25
DECREASE = 0.85  # of the rate admitted in a period whose backlog went over the target
EASE = 0.97  # of the rate, a period the process used more than EASE_OVER of its CPU share
EASE_OVER = 1.05  # (relative to cpu_share)
INCREASE = 1.03  # a period, while under both
FLOOR = 50.0  # sends/s: never paced below this
BURST_S = 0.05  # tokens kept: this many seconds of the rate


class SendPacer:
    def __init__(self, target_lag_s: float, monotonic: Callable[[], float] = time.monotonic,
                 cpu_share: float = 0.0, cpu: Callable[[], float] = time.process_time) -> None:
        """`cpu_share` 0: the backlog alone paces; `target_lag_s` 0: nothing does."""
        self.target_lag_s = target_lag_s
        self.cpu_share = cpu_share
        self.rate: float | None = None  # sends/s; None: not paced
        self.refused = 0  # since start (for /metrics)
        self.busy = 0.0  # CPU share of the last period
        self._monotonic = monotonic
        self._cpu = cpu
        self._begun = monotonic()
        self._cpu_begun = cpu()
        self._peak = 0.0
        self._admitted = 0
        self._refused = 0
        self._tokens = 0.0
        self._filled = self._begun
        self._demand: float | None = None  # sends/s admitted, smoothed over periods

    def observe(self, lag_s: float) -> None:
        """One backlog probe."""
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
        elapsed = now - self._begun
        admitted = self._admitted / elapsed
        cpu = self._cpu()
        self.busy = (cpu - self._cpu_begun) / elapsed
        # Smoothed: one period's count is low after a stall (the loop admitted nothing while it stood).
        self._demand = admitted if self._demand is None else 0.7 * self._demand + 0.3 * admitted
        share = self.cpu_share
        if self.target_lag_s > 0 and self._peak > self.target_lag_s:
            base = self._demand if self.rate is None else min(self.rate, max(self._demand, admitted))
            self.rate = max(FLOOR, DECREASE * base)
        elif self.target_lag_s > 0 and share > 0 and self.busy > share:
            if self.rate is None:
                self.rate = max(FLOOR, self._demand)  # hold what is coming in: more would saturate
            elif self.busy > share * EASE_OVER:
                self.rate = max(FLOOR, EASE * min(self.rate, max(self._demand, admitted)))
        elif self.rate is not None:
            self.rate *= INCREASE
            if not self._refused and self.rate > 1.5 * admitted:
                self.rate = None  # demand is well below it: stop pacing
        self._begun, self._cpu_begun, self._peak, self._admitted, self._refused = now, cpu, 0.0, 0, 0
