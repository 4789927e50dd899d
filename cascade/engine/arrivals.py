"""Requests in flight that may carry a signal, by arrival: the part of the
low watermark the shards cannot see yet.

From the moment a request reaches the front door until its commands are
applied and answered, its arrival holds the watermark back, so no shard
closes a window on a deadline after it (API.md rule 11). Requests enter in
arrival order on the event loop, so the oldest is at the front of a queue;
a finished request is dropped lazily when it reaches the front.

Before that moment a request is bytes in a socket the event loop has not
read yet. The front's loop probe says up to when the loop has read what
came (`read_up_to`: everything that reached the server before then has
been read and stamped, or is in the queue); the watermark holds there too,
so a loop that stalls stops windows from closing instead of escalating
chains whose clicks wait unread. None: no front reads for this engine (tests,
the manual clock).

On one server a request stops holding the watermark once its commands are in
the shards' mailboxes (`handed_over`): each mailbox holds it at their arrival
until they are applied, and a window can see an applied signal whatever its
journal commit is doing. Held until the answer instead, every window waited
for the disk (at 2,400 sends/s: step lateness p99 321 ms with the event p99
at 133 ms, the loop and the shards keeping up). A cluster node keeps its
requests until answered: the partitions they reach may be on other nodes.
"""

from __future__ import annotations

import itertools
import threading
from collections import deque
from collections.abc import Callable
from contextvars import ContextVar

__all__ = ["InFlight"]


class InFlight:
    def __init__(self, hold: Callable[[], float] | None = None, hand_over: bool = True) -> None:
        """`hold`: a time the watermark never passes, whatever is in flight (a cluster node's
        allowance for calls on their way from other nodes). `hand_over`: whether a request leaves
        once its commands are in the mailboxes (one server) or only when answered (a cluster node)."""
        # The request the running task serves (each request is served in a task of its own).
        self._current: ContextVar[list[float | bool] | None] | None = (
            ContextVar("cascade_in_flight_request", default=None) if hand_over else None)
        self._queue: deque[list[float | bool]] = deque()  # [arrival, done, read at]
        self._lock = threading.Lock()  # shards read the oldest from their threads
        self._read: float | None = None  # the front has read everything that arrived before this
        self._hold = hold
        self._forwarded: dict[int, float] = {}  # token -> arrival stamped by another node (any order)
        self._tokens = itertools.count()

    def read_up_to(self, t: float | None) -> None:
        """Advance the read horizon to `t` (never back: requests were stamped with it); None: no
        front reads any more (stopping), what is due may fire."""
        if t is None or self._read is None or t > self._read:
            self._read = t

    def arrival(self, now: float) -> float:
        """When a request the front reads now reached the server, at the
        earliest: not before the loop last read its sockets (a request that
        came before that was read then). So a click that waited unread while
        the loop was stalled still counts as arrived before the deadline it
        beat; in a loop that keeps up this is a few milliseconds early."""
        read = self._read
        return now if read is None or read > now else read

    def enter(self, arrival: float, read_at: float | None = None) -> list[float | bool]:
        """`read_at`: when the front read it (`arrival` may be earlier: stamped conservatively)."""
        entry: list[float | bool] = [arrival, False, arrival if read_at is None else read_at]
        with self._lock:
            self._queue.append(entry)
        if self._current is not None:
            self._current.set(entry)
        return entry

    def handed_over(self) -> None:
        """The running request's commands are in the mailboxes, which hold the watermark from now on."""
        if self._current is not None and (entry := self._current.get()) is not None:
            self._current.set(None)
            self.leave(entry)

    def leave(self, entry: list[float | bool]) -> None:
        if self._current is not None and self._current.get() is entry:
            self._current.set(None)
        with self._lock:
            entry[1] = True
            queue = self._queue
            while queue and queue[0][1]:
                queue.popleft()

    def enter_forwarded(self, arrival: float) -> int:
        """A call another node's front door stamped (arrivals of other nodes come in any order)."""
        token = next(self._tokens)
        with self._lock:
            self._forwarded[token] = arrival
        return token

    def leave_forwarded(self, token: int) -> None:
        with self._lock:
            self._forwarded.pop(token, None)

    def oldest(self) -> float | None:
        """The earliest arrival that may still bring a signal: of a request in
        flight, or of one not read yet."""
        read = self._read
        with self._lock:
            first = float(self._queue[0][0]) if self._queue else None
            if self._forwarded:
                forwarded = min(self._forwarded.values())
                first = forwarded if first is None or forwarded < first else first
        if self._hold is not None:
            hold = self._hold()
            first = hold if first is None or hold < first else first
        if first is None:
            return read
        return first if read is None or first < read else read

    def oldest_read(self) -> float | None:
        """When the oldest request read and not yet answered was read."""
        with self._lock:
            return float(self._queue[0][2]) if self._queue else None

    def __len__(self) -> int:
        return len(self._queue)
