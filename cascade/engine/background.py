"""Background work that yields to requests: campaign fan-outs and uploads.

A server process has one interpreter lock, so a request competes for it
with every thread doing background work. Three means keep requests first,
measured with bench/campaign.py on one core:

- while any background work runs, the interpreter switches threads every
  SWITCH_INTERVAL_S instead of CPython's 5 ms, so the event loop thread
  waits at most that long for the lock;
- background work leaves the process at most CPU_SHARE busy (CPU time over
  wall time over the last CPU_WINDOW_S), so a request arriving finds the
  lock free often enough: with the fan-out at full speed (92% busy) the p99
  of POST /v1/sends was 2.3x idle, held at 70-75% it was 1.4-1.8x (at
  57,000-62,000 campaign sends/s);
- it waits while requests are being served (`foreground`, set by the HTTP
  front to its in-flight count).

Waiting is bounded (DEFER_MAX_S a step), so a busy server slows background
work down without stopping it. Thread-safe.
"""

from __future__ import annotations

import sys
import threading
import time
from collections import deque
from contextlib import contextmanager
from typing import Callable, Iterator

__all__ = ["Background", "CPU_SHARE", "DEFER_MAX_S", "SWITCH_INTERVAL_S"]

SWITCH_INTERVAL_S = 0.0005
CPU_SHARE = 0.7
CPU_WINDOW_S = 0.1
DEFER_MAX_S = 0.02


class Background:
    def __init__(self, monotonic: Callable[[], float] = time.monotonic,
                 cpu_time: Callable[[], float] = time.process_time) -> None:
        self._monotonic = monotonic  # injected, so tests can play time and CPU
        self._cpu_time = cpu_time
        self.foreground: Callable[[], int] | None = None  # requests in flight (the HTTP front sets it)
        self._lock = threading.Lock()
        self._holders = 0
        self._saved_switch = 0.0
        self._cpu: deque[tuple[float, float]] = deque()  # (monotonic, process CPU seconds)

    def hold(self) -> None:
        """Background work begins: shorten the switch interval until the last `release`."""
        with self._lock:
            self._holders += 1
            if self._holders == 1:
                self._saved_switch = sys.getswitchinterval()
                sys.setswitchinterval(min(self._saved_switch, SWITCH_INTERVAL_S))

    def release(self) -> None:
        with self._lock:
            self._holders -= 1
            if self._holders == 0:
                sys.setswitchinterval(self._saved_switch)

    @contextmanager
    def running(self) -> Iterator[None]:
        self.hold()
        try:
            yield
        finally:
            self.release()

    def cpu_over(self) -> bool:
        """Has the process been busier than CPU_SHARE over the last CPU_WINDOW_S?"""
        now, cpu = self._monotonic(), self._cpu_time()
        with self._lock:
            samples = self._cpu
            samples.append((now, cpu))
            while len(samples) > 2 and samples[1][0] <= now - CPU_WINDOW_S:
                samples.popleft()
            then, cpu_then = samples[0]
        wall = now - then
        return wall > 0 and cpu - cpu_then > CPU_SHARE * wall

    def pause(self, stop: threading.Event, own_requests: int = 0) -> None:
        """Wait while requests other than `own_requests` are in flight or the
        process is over its CPU share; at most DEFER_MAX_S."""
        give_up = self._monotonic() + DEFER_MAX_S
        foreground = self.foreground
        while not stop.is_set() and self._monotonic() < give_up:
            if not (foreground is not None and foreground() > own_requests) and not self.cpu_over():
                return
            stop.wait(0.0002)
