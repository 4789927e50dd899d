"""Counters of a stream journal: the storage journal's, with publish acks
as its durable moments.

Where the file journal counts fsyncs, a stream journal counts publish acks:
the point at which its records are durable (held by a quorum of replicas).
So `fsyncs` is the number of acknowledged publishes, the fsync buckets and
`recent_fsync_seconds` hold publish round trips, and `writes` the messages
published; `latencies` (append to on_durable) are kept for benchmarks.
"""

from __future__ import annotations

import collections

from ..storage.journal import JournalCounters

__all__ = ["AckCounters"]


class AckCounters(JournalCounters):
    """Updated under the journal's lock or on its writer's loop; no Prometheus calls."""

    def __init__(self) -> None:
        super().__init__()
        self.latencies: collections.deque[float] = collections.deque(maxlen=100_000)

    def acked(self, seconds: float) -> None:
        """One publish acknowledged: a message written and made durable at once."""
        self.writes += 1
        self.fsync(seconds)

    def latency(self, seconds: float) -> None:
        self.latencies.append(seconds)
