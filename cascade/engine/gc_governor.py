"""Keeps the cyclic garbage collector from pausing over a million sends.

A full collection walks every tracked object: over a million send actors
that is a pause of half a second or more. Every `interval_s` the governor
collects the young generations (cheap, and it frees young cyclic garbage)
and then freezes everything that survived, moving it out of the collector's
sight. Send actors hold no reference cycles, so plain reference counting
still frees them when they go. The price: a cycle that became garbage after
reaching the oldest generation and before the next freeze is never
collected. That is rare (cycles are mostly young: requests, exceptions), and
`interval_s = 0` turns the governor off for those who prefer the pauses.
"""

from __future__ import annotations

import gc
import threading

__all__ = ["GcGovernor"]


class GcGovernor:
    def __init__(self, interval_s: float = 0.5) -> None:
        self.interval_s = interval_s
        self.freezes = 0
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

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.freeze_now()
