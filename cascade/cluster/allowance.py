"""How long a node's windows wait for signals forwarded from other nodes.

A signal stamped by another node's front door at `t` reaches the owner a
little later; the owner must not close a window with a deadline after `t`
in between (API rule 11 across nodes). It cannot see calls still on their
way, so it holds its watermark an allowance behind its clock: twice the
longest transit seen over the last two seconds (stamp to receipt, which
includes the sender's own backlog), never under `floor_s` nor over
`ceiling_s`. A loaded cluster thus holds its windows longer, an idle one
closes them within milliseconds of the deadline. A forwarded signal that
arrives later than the allowance it met is counted (`late`): its window
may have closed before it came, which is what /metrics then shows.
A cluster of one node forwards nothing and holds nothing.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

__all__ = ["ForwardAllowance"]

BUCKET_S = 1.0


class ForwardAllowance:
    def __init__(self, forwarding: Callable[[], bool], floor_s: float = 0.01, ceiling_s: float = 1.0,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        """`forwarding`: whether another node is alive (and so may forward calls here)."""
        self.forwarding, self.floor_s, self.ceiling_s, self._monotonic = forwarding, floor_s, ceiling_s, monotonic
        self._lock = threading.Lock()
        self._bucket = int(monotonic() / BUCKET_S)
        self._longest = [0.0, 0.0]  # this bucket's and the previous one's longest transit
        self.late = 0

    def _roll(self) -> None:
        bucket = int(self._monotonic() / BUCKET_S)
        if bucket != self._bucket:
            self._longest = [0.0, self._longest[0] if bucket == self._bucket + 1 else 0.0]
            self._bucket = bucket

    def observe(self, transit_s: float) -> None:
        """A forwarded signal stamped `transit_s` (wall seconds) before it arrived here."""
        with self._lock:
            if transit_s > self._allowance():
                self.late += 1
            self._roll()
            if transit_s > self._longest[0]:
                self._longest[0] = transit_s

    def _allowance(self) -> float:
        return min(self.ceiling_s, max(self.floor_s, 2.0 * max(self._longest)))

    def seconds(self) -> float:
        """The wall seconds windows wait now (0 while no other node is alive and none forwarded lately)."""
        with self._lock:
            self._roll()
            if not self.forwarding() and not any(self._longest):
                return 0.0
            return self._allowance()
