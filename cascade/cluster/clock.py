"""The clock a cluster's nodes read alike.

Real: the wall clock (nodes agree as far as NTP keeps them). Scaled: `rate`
clock seconds per wall second, counted from one origin recorded in the
cluster's bucket when the cluster was created, on each node's wall clock,
not from each process's start (a single server's ScaledClock counts from
its own start on its monotonic clock, so two nodes started a second apart
would disagree by `rate` seconds). Recovery may not move it: `restore` is a
no-op, because a partition taken over must not set the time of the other
partitions of its node. The manual clock is one process's and is refused
in a cluster (config.py).
"""

from __future__ import annotations

import time
from typing import Any

__all__ = ["ClusterClock"]


class ClusterClock:
    def __init__(self, mode: str, rate: float = 1.0) -> None:
        if mode not in ("real", "scaled"):
            raise ValueError(f"a cluster's clock is real or scaled, not {mode!r}")
        self.mode = mode
        self.rate = float(rate) if mode == "scaled" else 1.0
        self._origin_wall = self._origin = time.time()

    def origin(self) -> dict[str, Any]:
        return {"mode": self.mode, "rate": self.rate, "origin_wall": self._origin_wall, "origin": self._origin}

    def adopt(self, recorded: dict[str, Any]) -> None:
        """Count from the origin the cluster recorded (a node joining a cluster that exists)."""
        self._origin_wall, self._origin = float(recorded["origin_wall"]), float(recorded["origin"])

    def now(self) -> float:
        if self.mode == "real":
            return time.time()
        return self._origin + (time.time() - self._origin_wall) * self.rate

    def restore(self, when: float) -> None:
        """Recovery's call: the cluster's time is not a partition's to set."""
