"""Plain counters of a stream journal, frozen into the storage journal's `JournalStats`.

Where the file journal counts fsyncs, a stream journal counts publish acks:
the point at which its records are durable (held by a quorum of replicas).
So `fsyncs` is the number of acknowledged publishes, the fsync buckets and
`recent_fsync_seconds` hold publish round trips, and `writes` the messages
published; `latencies` (append to on_durable) are kept for benchmarks.
"""

from __future__ import annotations

import bisect
import collections

from ..storage.journal import FSYNC_BUCKETS, JournalStats

__all__ = ["AckCounters"]


class AckCounters:
    """Updated under the journal's lock or on its writer's loop; no Prometheus calls."""

    def __init__(self) -> None:
        self.appends = self.records = self.bytes = self.writes = self.waits = 0
        self.ack_sum = self.ack_max = 0.0
        self.buckets = [0] * (len(FSYNC_BUCKETS) + 1)
        self.recent: collections.deque[float] = collections.deque(maxlen=256)
        self.latencies: collections.deque[float] = collections.deque(maxlen=100_000)

    def appended(self, records: int, size: int) -> None:
        self.appends, self.records, self.bytes = self.appends + 1, self.records + records, self.bytes + size

    def acked(self, seconds: float) -> None:
        self.writes += 1
        self.ack_sum += seconds
        self.ack_max = max(self.ack_max, seconds)
        self.buckets[bisect.bisect_left(FSYNC_BUCKETS, seconds)] += 1
        self.recent.append(seconds)

    def latency(self, seconds: float) -> None:
        self.latencies.append(seconds)

    def freeze(self, position: int, durable: int, pending: int, segments: int) -> JournalStats:
        cumulative, total = [], 0
        for bound, count in zip((*FSYNC_BUCKETS, float("inf")), self.buckets):
            total += count
            cumulative.append((bound, total))
        return JournalStats(
            position, durable, self.appends, self.records, self.bytes, self.writes, self.writes,
            self.ack_sum, self.ack_max, tuple(cumulative), tuple(self.recent), pending, self.waits, segments,
        )
