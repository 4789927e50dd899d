"""The bridge from shard threads back to callers, threads or asyncio.

A `Reply` is filled in by a shard while it processes a batch (`set`), and
its waiter is woken only when the batch is done and durable
(`resolve_batch`): a blocking caller through a threading event, an asyncio
caller through `loop.call_soon_threadsafe` — one call per batch for all the
replies of one loop, never a blocking pykka `get()` on the loop.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any, Callable, Generator, Iterable

__all__ = ["Gather", "Reply", "resolve_batch"]

_UNSET = object()


class Reply:
    __slots__ = ("_value", "_error", "_event", "_future", "_loop")

    def __init__(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self._value: Any = _UNSET
        self._error: BaseException | None = None
        self._loop = loop
        self._event = None if loop is not None else threading.Event()
        self._future: asyncio.Future[Any] | None = loop.create_future() if loop is not None else None

    @classmethod
    def here(cls) -> Reply:
        """A reply for the calling context: asyncio-aware when a loop runs."""
        try:
            return cls(asyncio.get_running_loop())
        except RuntimeError:
            return cls()

    @classmethod
    def resolved(cls, value: Any) -> Reply:
        """An answer known at once, in the calling context's flavour."""
        reply = cls.here()
        reply.set(value)
        if reply._loop is None:
            reply._wake()
        else:
            reply._apply()
        return reply

    @property
    def loop(self) -> asyncio.AbstractEventLoop | None:
        return self._loop

    def set(self, value: Any) -> None:
        self._value = value

    def set_error(self, error: BaseException) -> None:
        self._error = error
        self._value = None

    def _wake(self) -> None:
        """Blocking waiters: called on whatever thread finished the work."""
        if self._event is not None:
            self._event.set()

    def _apply(self) -> None:
        """asyncio waiters: called on the loop's own thread."""
        fut = self._future
        if fut is None or fut.done():
            return
        if self._error is not None:
            fut.set_exception(self._error)
        else:
            fut.set_result(self._value)

    def done(self) -> bool:
        """Has the answer come (and been released to waiters)?"""
        if self._event is not None:
            return self._event.is_set()
        return self._future is not None and self._future.done()

    def wait(self, timeout: float | None = 30.0) -> Any:
        if self._event is None:
            raise RuntimeError("an asyncio reply must be awaited")
        if not self._event.wait(timeout):
            raise TimeoutError("the engine did not answer in time")
        if self._error is not None:
            raise self._error
        return self._value

    def __await__(self) -> Generator[Any, None, Any]:
        if self._future is None:
            raise RuntimeError("a blocking reply must be waited on with wait()")
        return self._future.__await__()


def _apply_all(replies: list[Reply]) -> None:
    for r in replies:
        r._apply()


def resolve_batch(replies: Iterable[Any]) -> None:
    """Wake every waiter of a finished batch: one thread hop per event loop."""
    by_loop: dict[asyncio.AbstractEventLoop, list[Reply]] = {}
    for r in replies:
        if r._loop is None:
            r._wake()
        else:
            by_loop.setdefault(r._loop, []).append(r)
    for loop, group in by_loop.items():
        try:
            loop.call_soon_threadsafe(_apply_all, group)
        except RuntimeError:
            pass  # the loop has closed: nobody is waiting any more


class Gather:
    """Fan-in of one request split across shards: `part(i)` goes to shard i,
    and `parent` is resolved with `combine(results)` once every part is."""

    def __init__(self, n: int, combine: Callable[[list[Any]], Any], parent: Reply, keep_errors: bool = False) -> None:
        self._keep_errors = keep_errors  # a part's error becomes its result instead of failing the whole
        self._results: list[Any] = [None] * n
        self._left = n
        self._lock = threading.Lock()
        self._combine = combine
        self._parent = parent
        self._error: BaseException | None = None
        if n == 0:
            self._finish()

    def part(self, i: int) -> _Part:
        return _Part(self, i)

    def _done(self, i: int, value: Any, error: BaseException | None) -> None:
        with self._lock:
            self._results[i] = error if error is not None and self._keep_errors else value
            if error is not None and self._error is None and not self._keep_errors:
                self._error = error
            self._left -= 1
            last = self._left == 0
        if last:
            self._finish()

    def _finish(self) -> None:
        parent = self._parent
        if self._error is not None:
            parent.set_error(self._error)
        else:
            try:
                parent.set(self._combine(self._results))
            except Exception as exc:  # noqa: BLE001 - hand it to the waiter
                parent.set_error(exc)
        resolve_batch([parent])


class _Part:
    """A Reply stand-in for one shard's share of a gathered request."""

    __slots__ = ("_gather", "_i", "_loop", "_value", "_error")

    def __init__(self, gather: Gather, i: int) -> None:
        self._gather = gather
        self._i = i
        self._loop = None
        self._value: Any = None
        self._error: BaseException | None = None

    def set(self, value: Any) -> None:
        self._value = value

    def set_error(self, error: BaseException) -> None:
        self._error = error

    def _wake(self) -> None:
        self._gather._done(self._i, self._value, self._error)
