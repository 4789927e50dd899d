"""Moving a manual clock: every timer that falls due fires, in deadline
order across shards, before the move is answered.

Between two deadlines it waits until every provider answer already on its
way has been applied (outstanding.py): a refusal escalates at once (rule 5),
so one large advance fires exactly what many small ones would. What the
extensions have due on the way (campaigns starting) happens at its time.
"""

from __future__ import annotations

import threading
from typing import Any, Sequence

from ..domain.errors import InvalidInput
from ..domain.records import ClockMoved
from ..storage.journal import Journal
from .clock import ManualClock
from .commands import Command
from .extension import Extension
from .outstanding import Outstanding
from .reply import Reply
from .router import Router

__all__ = ["ManualTime"]


class ManualTime:
    def __init__(self, clock: Any, router: Router, extensions: Sequence[Extension], outstanding: Outstanding,
                 journal: Journal | None, answer_wait_s: float) -> None:
        self.clock = clock
        self.router = router
        self.extensions = extensions
        self.outstanding = outstanding
        self.journal = journal
        self.answer_wait_s = answer_wait_s  # bounds the wait for answers (retries with backoff) at one instant
        self._lock = threading.Lock()

    def advance(self, seconds: float) -> float:
        """Blocking: call it from a thread, not from an event loop."""
        clock = self.clock
        if not isinstance(clock, ManualClock):
            raise InvalidInput("the clock is not manual", [("clock.mode", "advance needs clock.mode = \"manual\"")])
        if seconds < 0:
            raise InvalidInput("time can't go backwards", [("$.advanceSeconds", "must be >= 0")])
        self.router.check_open()
        with self._lock:
            target = clock.now() + seconds
            t = clock.now()
            while True:
                nexts = self._settle_at(t) + [e.next_due() for e in self.extensions]
                due = [d for d in nexts if d is not None and d <= target]
                if not due:
                    break
                t = max(t, min(due))
                clock.set(t)
            clock.set(target)
            self._settle_at(target)
            if self.journal is not None:
                done = threading.Event()
                self.journal.append([ClockMoved(target)], done.set)
                done.wait()
            return target

    def _settle_at(self, t: float) -> list[float | None]:
        """Everything that happens at `t`: the extensions' due work, firings,
        the answers they cause; then each shard's next deadline."""
        for extension in self.extensions:
            extension.settle_at(t)
        self._fire_all(t)
        self.outstanding.wait_idle(self.answer_wait_s)
        return self._fire_all(t)

    def _fire_all(self, until: float) -> list[float | None]:
        replies = []
        for i in range(self.router.shards):
            reply = Reply()
            self.router.post(i, [Command("fire", until, reply)])
            replies.append(reply)
        return [r.wait(None) for r in replies]
