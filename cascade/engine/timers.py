"""A timing wheel of absolute one-second buckets, one per shard.

Each item (a send) has at most one deadline. Scheduling and cancelling are
O(1) dict operations; a cancelled entry is removed at once, so a million
cancelled windows leave no garbage behind. Buckets are found in order
through a heap of bucket numbers (one heap entry per distinct second, not per
timer). `pop_due` returns items in deadline order.
"""

from __future__ import annotations

import heapq
import math
from typing import Generic, Hashable, TypeVar

__all__ = ["TimerWheel"]

T = TypeVar("T", bound=Hashable)


class TimerWheel(Generic[T]):
    def __init__(self) -> None:
        self._buckets: dict[int, dict[T, float]] = {}
        self._order: list[int] = []  # bucket numbers; may hold numbers of emptied buckets
        self._count = 0

    def __len__(self) -> int:
        return self._count

    @property
    def buckets(self) -> int:
        """Seconds that hold at least one timer (what the wheel's memory grows with)."""
        return len(self._buckets)

    def schedule(self, item: T, deadline: float) -> None:
        slot = int(deadline)  # deadlines are epoch seconds, > 0: int() is floor(), and faster
        bucket = self._buckets.get(slot)
        if bucket is None:
            bucket = self._buckets[slot] = {}
            heapq.heappush(self._order, slot)
        if item not in bucket:
            self._count += 1
        bucket[item] = deadline

    def schedule_many(self, timed: list[tuple[T, float]]) -> None:
        """`schedule` of each (item, deadline) of items not scheduled yet, as
        recovery loads a million: buckets filled in one pass, their order
        made once."""
        buckets = self._buckets
        added = 0
        for item, deadline in timed:
            slot = int(deadline)
            bucket = buckets.get(slot)
            if bucket is None:
                bucket = buckets[slot] = {}
            if item not in bucket:
                added += 1
            bucket[item] = deadline
        self._count += added
        self._order = list(buckets)
        heapq.heapify(self._order)

    def cancel(self, item: T, deadline: float) -> bool:
        slot = int(deadline)
        bucket = self._buckets.get(slot)
        if bucket is None or bucket.pop(item, None) is None:
            return False
        self._count -= 1
        if not bucket:
            del self._buckets[slot]  # its heap entry is skipped when reached
        return True

    def _first_slot(self) -> int | None:
        order = self._order
        while order and order[0] not in self._buckets:
            heapq.heappop(order)
        return order[0] if order else None

    def next_deadline(self) -> float | None:
        slot = self._first_slot()
        if slot is None:
            return None
        return min(self._buckets[slot].values())

    def pop_due(self, now: float) -> list[T]:
        """Remove and return every item whose deadline is <= now, in deadline order."""
        due: list[T] = []
        horizon = math.floor(now)
        while True:
            slot = self._first_slot()
            if slot is None or slot > horizon:
                break
            bucket = self._buckets[slot]
            if slot < horizon:
                items = sorted(bucket, key=bucket.__getitem__)
                del self._buckets[slot]
            else:
                items = sorted((i for i, d in bucket.items() if d <= now), key=bucket.__getitem__)
                for item in items:
                    del bucket[item]
                if bucket:
                    self._count -= len(items)
                    due += items
                    break
                del self._buckets[slot]
            heapq.heappop(self._order)
            self._count -= len(items)
            due += items
        return due
