"""Plain statistics a shard keeps for Prometheus: written by the shard's own
thread only, read (racily, which is fine for monitoring) at scrape time."""

from __future__ import annotations

from typing import Any

from ..domain.channels import CHANNELS, SIGNALS
from ..domain.sequence import SignalOutcome

__all__ = ["LATENESS_BUCKETS", "ShardStats"]

LATENESS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 60.0)


class ShardStats:
    def __init__(self) -> None:
        self.signals = [[0] * len(SignalOutcome.NAMES) for _ in SIGNALS]  # [kind][outcome]
        self.lateness_counts = [0] * (len(LATENESS_BUCKETS) + 1)
        self.lateness_sum = 0.0
        self.watermark_lag = 0.0  # now - the low watermark, at the end of the last batch
        self.refused_closed = 0  # signal commands refused: stamped before a window that had closed (closed_before)
        # synchronous providers' answers: deliveries[channel][ok] (async ones: the dispatcher's stats)
        self.deliveries: dict[str, list[int]] = {c: [0, 0] for c in CHANNELS}

    def signal(self, kind: int, outcome: int) -> None:
        self.signals[kind][outcome] += 1

    def snapshot(self, **gauges: int) -> dict[str, Any]:
        return {
            **gauges,
            "signals": {(SIGNALS[k], SignalOutcome.NAMES[o]): n for k, row in enumerate(self.signals)
                        for o, n in enumerate(row) if n},
            "lateness_counts": list(self.lateness_counts),
            "lateness_sum": self.lateness_sum,
            "watermark_lag": self.watermark_lag,
            "refused_closed": self.refused_closed,
            "deliveries": {(c, "ok" if ok else "failed"): n for c, row in self.deliveries.items()
                           for ok, n in enumerate(row) if n},
        }
