"""The delivery dispatcher: runs asynchronous providers on one event loop.

Shard threads hand it whole batches (`submit`, one thread hop a batch); each
provider has a lane: a FIFO queue and at most `max_in_flight` deliveries
running, the rest waiting in submission order. Invariants:
- every submitted job is handed back exactly once, as `(token, outcome)`, to
  the `on_results` it came with, on the loop thread, batched: all results
  finished within one loop iteration go out in one call per callback;
- a provider that raises yields `DeliveryOutcome(False, "provider_error: …")`;
- `aclose`/`stop` drain: jobs already submitted still run, then providers
  close. Only past the timeout are the rest abandoned without a result (the
  journal has none either, so recovery posts them again: at least once).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Mapping
from typing import Any

from .providers.base import DeliveryOutcome, OutgoingMessage, Provider

__all__ = ["DeliveryDispatcher", "Job", "OnResults"]

Job = tuple[str, OutgoingMessage, Any]  # (provider name, message, caller's token)
OnResults = Callable[[list[tuple[Any, DeliveryOutcome]]], None]

_log = logging.getLogger(__name__)


class _Lane:
    __slots__ = ("provider", "limit", "queue", "in_flight")

    def __init__(self, provider: Provider, limit: int) -> None:
        if limit < 1:
            raise ValueError(f"max_in_flight {limit!r} for {provider.name!r} is not allowed; use at least 1")
        self.provider = provider
        self.limit = limit
        self.queue: deque[tuple[OutgoingMessage, Any, OnResults, float]] = deque()  # ..., monotonic time queued
        self.in_flight = 0


class DeliveryDispatcher:
    """Runs `Provider.deliver` calls for shard threads; see the module doc."""

    def __init__(
        self,
        providers: Mapping[str, Provider],
        max_in_flight: Mapping[str, int] | int = 256,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        def limit(name: str) -> int:
            return max_in_flight if isinstance(max_in_flight, int) else max_in_flight.get(name, 256)

        self._lanes = {name: _Lane(p, limit(name)) for name, p in providers.items()}
        self._loop = loop
        self._own_loop = loop is None
        self._thread: threading.Thread | None = None
        self._cond = threading.Condition()  # guards _pending, _closed, _counts
        self._pending = 0
        self._closed = False
        self._abandoned = False
        self._counts: Counter[tuple[str, str, str]] = Counter()
        # (on_results, token, outcome, channel, provider), counted and handed back by _flush
        self._done: list[tuple[OnResults, Any, DeliveryOutcome, str, str]] = []
        self._flush_scheduled = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._idle_waiters: list[asyncio.Future[None]] = []

    def start(self) -> None:
        """Start the dispatcher's own loop thread, unless a loop was given."""
        if self._loop is not None:
            return
        loop = asyncio.new_event_loop()
        running = threading.Event()
        loop.call_soon(running.set)
        self._thread = threading.Thread(target=loop.run_forever, name="cascade-delivery", daemon=True)
        self._loop = loop
        self._thread.start()
        running.wait()

    def submit(self, jobs: list[Job], on_results: OnResults) -> None:
        """Queue a batch from any thread; results come back via `on_results`."""
        if not jobs:
            return
        with self._cond:
            if self._loop is None or self._closed:
                raise RuntimeError("delivery dispatcher is not running: submit() after start(), before stop()")
            self._pending += len(jobs)
            # Under the lock, so aclose() cannot start draining in between.
            self._loop.call_soon_threadsafe(self._accept, jobs, on_results)

    def pending(self) -> int:
        """Jobs submitted whose results have not been handed back yet."""
        with self._cond:
            return self._pending

    def oldest_wait(self) -> float:
        """How long the oldest message waiting for a slot has waited (s): the
        delivery backlog, which the engine sheds new sends against. Read
        from any thread (a racing pop only makes the answer a little old)."""
        oldest = 0.0
        now = time.monotonic()
        for lane in self._lanes.values():
            try:
                oldest = max(oldest, now - lane.queue[0][3])
            except IndexError:
                pass
        return oldest

    def stats(self) -> dict[str, Any]:
        """Plain numbers for http/metrics.py; attempts are keyed (channel,
        provider, outcome): "ok"/"failed" a job, "retried" an extra attempt."""
        with self._cond:
            attempts = dict(self._counts)
        return {
            "in_flight": {name: lane.in_flight for name, lane in self._lanes.items()},
            "queued": {name: len(lane.queue) for name, lane in self._lanes.items()},
            "attempts": attempts,
        }

    async def wait_idle(self) -> None:
        """On the dispatcher's loop: return once pending() == 0."""
        while self.pending():
            waiter = asyncio.get_running_loop().create_future()
            self._idle_waiters.append(waiter)
            await waiter

    def wait_idle_threadsafe(self, timeout: float | None = None) -> bool:
        """From any other thread: block until pending() == 0; False on timeout."""
        self._check_not_on_loop("wait_idle_threadsafe")
        with self._cond:
            return self._cond.wait_for(lambda: self._pending == 0, timeout)

    async def aclose(self, timeout: float | None = None) -> None:
        """On the dispatcher's loop: refuse new work, drain, close providers."""
        with self._cond:
            self._closed = True
        try:
            await asyncio.wait_for(self.wait_idle(), timeout)
        except asyncio.TimeoutError:
            await self._abandon()
        for name, lane in self._lanes.items():
            try:
                await lane.provider.close()
            except Exception:
                _log.exception("closing delivery provider %r failed", name)

    def stop(self, timeout: float | None = None) -> None:
        """From any other thread: aclose(timeout), then end our own loop."""
        loop = self._loop
        if loop is None:
            return
        self._check_not_on_loop("stop")
        asyncio.run_coroutine_threadsafe(self.aclose(timeout), loop).result()
        if self._own_loop and self._thread is not None:
            loop.call_soon_threadsafe(loop.stop)
            self._thread.join()
            loop.close()
            self._thread = self._loop = None

    # -- on the loop thread --------------------------------------------------

    def _accept(self, jobs: list[Job], on_results: OnResults) -> None:
        if self._abandoned:  # past the drain timeout: no result, as for the rest
            return
        touched: list[_Lane] = []
        now = time.monotonic()
        for name, message, token in jobs:
            lane = self._lanes.get(name)
            if lane is None:
                outcome = DeliveryOutcome(False, f"unknown_provider: {name}", attempts=0)
                self._finish(on_results, token, message, name, outcome)
                continue
            lane.queue.append((message, token, on_results, now))
            touched.append(lane)
        for lane in dict.fromkeys(touched):  # each lane once, in order
            self._pump(lane)

    def _pump(self, lane: _Lane) -> None:
        queue, loop, tasks = lane.queue, self._loop, self._tasks
        assert loop is not None
        while queue and lane.in_flight < lane.limit and not self._abandoned:
            message, token, on_results, _ = queue.popleft()
            lane.in_flight += 1
            tasks.add(loop.create_task(self._run(lane, message, token, on_results)))

    async def _run(self, lane: _Lane, message: OutgoingMessage, token: Any, on_results: OnResults) -> None:
        try:
            outcome = await lane.provider.deliver(message)
            if not isinstance(outcome, DeliveryOutcome):
                raise TypeError(f"deliver() returned {outcome!r}, not a DeliveryOutcome")
        except Exception as exc:
            _log.exception("delivery provider %r failed on message %s", lane.provider.name, message.message_id)
            outcome = DeliveryOutcome(False, f"provider_error: {exc!r}")
        finally:  # also on cancellation, so the lane never leaks a slot
            task = asyncio.current_task(self._loop)
            if task is not None:
                self._tasks.discard(task)
            lane.in_flight -= 1
            self._pump(lane)
        self._finish(on_results, token, message, lane.provider.name, outcome)

    def _finish(
        self, on_results: OnResults, token: Any, message: OutgoingMessage, provider: str, outcome: DeliveryOutcome
    ) -> None:
        if not outcome.ok:
            _log.warning("%s delivery of %s failed after %d attempt%s: %s", message.channel, message.message_id,
                         outcome.attempts, "" if outcome.attempts == 1 else "s", outcome.reason,
                         extra={"event": "delivery_failed", "channel": message.channel,
                                "messageId": message.message_id, "attempt": outcome.attempts,
                                "reason": outcome.reason})
        self._done.append((on_results, token, outcome, message.channel, provider))
        if not self._flush_scheduled:
            # Next iteration: every result finishing in this one rides along.
            self._flush_scheduled = True
            assert self._loop is not None
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        done, self._done, self._flush_scheduled = self._done, [], False
        by_callback: dict[OnResults, list[tuple[Any, DeliveryOutcome]]] = {}
        counts: dict[tuple[str, str, bool], list[int]] = {}  # (channel, provider, ok) -> [jobs, extra attempts]
        for on_results, token, outcome, channel, provider in done:
            results = by_callback.get(on_results)
            if results is None:
                results = by_callback[on_results] = []
            results.append((token, outcome))
            key = (channel, provider, outcome.ok)
            count = counts.get(key)
            if count is None:
                count = counts[key] = [0, 0]
            count[0] += 1
            if outcome.attempts > 1:
                count[1] += outcome.attempts - 1
        with self._cond:
            for (channel, provider, ok), (jobs, retried) in counts.items():
                self._counts[(channel, provider, "ok" if ok else "failed")] += jobs
                if retried > 0:
                    self._counts[(channel, provider, "retried")] += retried
        for on_results, results in by_callback.items():
            try:
                on_results(results)
            except Exception:
                _log.exception("on_results callback failed; %d results dropped", len(results))
        with self._cond:
            self._pending -= len(done)
            self._settle()

    async def _abandon(self) -> None:
        self._abandoned = True
        left = sum(len(lane.queue) for lane in self._lanes.values()) + len(self._tasks)
        _log.warning("delivery drain timed out; abandoning %d jobs without a result", left)
        for lane in self._lanes.values():
            lane.queue.clear()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._flush()
        with self._cond:
            self._pending = 0  # abandoned jobs are no longer pending
            self._settle()

    def _settle(self) -> None:
        # Caller holds self._cond.
        if self._pending == 0:
            self._cond.notify_all()
            waiters, self._idle_waiters = self._idle_waiters, []
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)

    def _check_not_on_loop(self, what: str) -> None:
        try:
            on_loop = asyncio.get_running_loop() is self._loop
        except RuntimeError:  # no loop running in this thread
            on_loop = False
        if on_loop:
            raise RuntimeError(f"{what}() blocks; call it from another thread than the delivery loop's")
