"""One shard's mailbox as the front sees it, and admission to it.

A `Mailbox` counts every command posted to its shard, on every path
(requests, ticks, firings, delivery answers, bulk batches), from admission
until the shard has processed it, so its depth can never drift or go
negative. It also keeps the arrival times of the commands not yet processed
as a monotonic queue, so the oldest is known in O(1): the shard's low
watermark. A window with deadline `d` may close only once everything that
reached the server before `d` has been applied (API.md rule 11).

Beside it, when each of those commands was posted: how long the shard has
left work waiting. The arrival stamp cannot say that, because the front
stamps a request conservatively (as of when the loop last read its sockets,
arrivals.py), tens of milliseconds early after a loop hiccup: shedding sends
on that age refused them while the shard was idle.

`Admission` decides, under one lock for all mailboxes (so a request that
spans shards is admitted whole or not at all), what may enter: engagement
and cancels are refused only at the hard bound; new sends are shed first,
as soon as a mailbox is a quarter full or the server falls behind
(`behind()`: the event loop's lag or how long the oldest command has waited).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import Callable, Sequence

from ..domain.errors import Overloaded

__all__ = ["Admission", "Mailbox", "SEND", "SIGNAL", "INTERNAL"]

SEND, SIGNAL, INTERNAL = range(3)  # admission classes, most sheddable first


class Mailbox:
    __slots__ = ("posted", "processed", "_arrivals", "_posted_at", "_now", "_lock")

    def __init__(self, now: Callable[[], float] = time.monotonic) -> None:
        """`now`: the clock that stamps posts (the engine's, so `waiting_since` compares with it)."""
        self.posted = 0
        self.processed = 0
        self._arrivals: deque[tuple[int, float]] = deque()  # (posted count after it, arrival), arrivals rising
        self._posted_at: deque[tuple[int, float]] = deque()  # (posted count after it, when), of the same posts
        self._now = now
        self._lock = threading.Lock()

    @property
    def depth(self) -> int:
        return self.posted - self.processed

    def post(self, n: int, arrival: float | None) -> None:
        """Count `n` commands in (the caller holds the admission lock)."""
        with self._lock:
            self.posted += n
            if arrival is not None:
                arrivals = self._arrivals
                while arrivals and arrivals[-1][1] >= arrival:
                    arrivals.pop()  # a later command that arrived earlier is the older one
                arrivals.append((self.posted, arrival))
                self._posted_at.append((self.posted, self._now()))

    def taken(self, n: int) -> float | None:
        """The shard processed `n` more; the oldest arrival still queued."""
        with self._lock:
            self.processed += n
            arrivals = self._arrivals
            while arrivals and arrivals[0][0] <= self.processed:
                arrivals.popleft()
            posted_at = self._posted_at
            while posted_at and posted_at[0][0] <= self.processed:
                posted_at.popleft()
            return arrivals[0][1] if arrivals else None

    def waiting_since(self) -> float | None:
        """When the oldest command from a request still queued was posted (as of the shard's last `taken`)."""
        with self._lock:
            posted_at = self._posted_at
            return posted_at[0][1] if posted_at else None


class Admission:
    """What may enter the mailboxes; raises `Overloaded` (503) otherwise."""

    def __init__(self, mailboxes: Sequence[Mailbox], limit: int, behind: Callable[[], str | None]) -> None:
        self.mailboxes = mailboxes
        self.limit = limit  # hard bound per mailbox: beyond it even signals are refused
        self.send_limit = max(1, limit // 4) if limit > 0 else 0
        self.behind = behind  # why the server is behind (shed new sends), or None
        self.lock = threading.Lock()
        self.shed_by_reason: dict[str, int] = {"queue": 0, "lag": 0, "paced": 0}
        self.refused_signals = 0

    def admit(self, counts: Sequence[tuple[int, int]], kind: int, arrival: float | None) -> None:
        """Admit (shard, n) pairs together, or none of them."""
        mailboxes = self.mailboxes
        with self.lock:
            if kind == SEND:
                for i, n in counts:
                    if mailboxes[i].depth + n > self.send_limit:
                        self._shed("queue", f"shard {i} has {mailboxes[i].depth} commands queued; retry shortly")
                why = self.behind()
                if why is not None:
                    self._shed("lag", why)
            elif kind == SIGNAL:
                for i, n in counts:
                    if mailboxes[i].depth + n > self.limit:
                        self.refused_signals += 1
                        raise Overloaded(f"shard {i} has {mailboxes[i].depth} commands queued; retry shortly")
            for i, n in counts:
                mailboxes[i].post(n, arrival)

    def note_shed(self, reason: str) -> None:
        """Count a send refused (here, or by the HTTP front before reading it)."""
        self.shed_by_reason[reason] += 1

    def _shed(self, reason: str, message: str) -> None:
        self.note_shed(reason)
        raise Overloaded(message, retry_after_s=1)
