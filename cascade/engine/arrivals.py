"""Requests in flight that may carry a signal, by arrival: the part of the
low watermark the shards cannot see yet.

From the moment a request reaches the front door until its commands are
applied and answered, its arrival holds the watermark back, so no shard
closes a window on a deadline after it (API.md rule 11). Requests enter in
arrival order on the event loop, so the oldest is at the front of a queue;
a finished request is dropped lazily when it reaches the front.
"""

from __future__ import annotations

import threading
from collections import deque

__all__ = ["InFlight"]


class InFlight:
    def __init__(self) -> None:
        self._queue: deque[list[float | bool]] = deque()  # [arrival, done]
        self._lock = threading.Lock()  # shards read the oldest from their threads

    def enter(self, arrival: float) -> list[float | bool]:
        entry: list[float | bool] = [arrival, False]
        with self._lock:
            self._queue.append(entry)
        return entry

    def leave(self, entry: list[float | bool]) -> None:
        with self._lock:
            entry[1] = True
            queue = self._queue
            while queue and queue[0][1]:
                queue.popleft()

    def oldest(self) -> float | None:
        with self._lock:
            return float(self._queue[0][0]) if self._queue else None

    def __len__(self) -> int:
        return len(self._queue)
