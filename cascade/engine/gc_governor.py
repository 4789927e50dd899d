"""Keeps the cyclic garbage collector from pausing over a million sends.

A full collection walks every tracked object: over a million send actors
that is a pause of half a second or more. So every `interval_s`, if the
young generations have promoted anything since the last time, the governor
collects them (cheap, and it frees young cyclic garbage) and then freezes
everything that survived, moving it out of the collector's sight: the
oldest generation never holds more than a fraction of a second of new
objects, and a full collection stays short.

The price, stated plainly: an object alive at a freeze that later ends up
in an unreachable reference cycle is never collected. Send actors, their
notes and counters hold no cycles, so reference counting frees them; what
can leak is a library's long-lived cyclic structure that dies after a freeze
(an HTTP connection's objects, for instance): small, and proportional to
such objects, not to sends. `engine.gc_freeze_interval_s = 0` turns the
governor off for those who prefer the pauses.
"""

from __future__ import annotations

import gc
import threading

__all__ = ["GcGovernor"]


class GcGovernor:
    def __init__(self, interval_s: float = 0.1) -> None:
        self.interval_s = interval_s
        self.freezes = 0
        self._promotions_seen = -1
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self.interval_s > 0 and self._thread is None:
            self._thread = threading.Thread(target=self._run, name="cascade-gc", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def freeze_now(self) -> None:
        gc.collect(1)
        gc.freeze()
        self.freezes += 1
        self._promotions_seen = gc.get_stats()[1]["collections"]

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            # Each collection of generation 1 moves its survivors to the
            # oldest generation; none since the last freeze: nothing to do.
            if gc.get_stats()[1]["collections"] != self._promotions_seen:
                self.freeze_now()
