"""The bridge from shard threads back to callers, threads or asyncio.

A `Reply` is filled in by a shard while it processes a batch (`set`), and
its waiter is woken only when the batch is done and durable
(`resolve_batch`): a blocking caller through a threading event, an asyncio
caller through `loop.call_soon_threadsafe` — one call per batch for all the
replies of one loop, never a blocking pykka `get()` on the loop.

On a loop a `Reply` is its own future (asyncio's duck-typed protocol: what
`asyncio.isfuture` accepts, so tasks, `wait_for` and `gather` take it as
is), not a wrapper of an `asyncio.Future`. Why: a Future runs its waiters'
callbacks on the loop's *next* pass, and under load a pass is what the loop
lags by; a signal's answer waited one pass for the reply to land and one
more for its handler to go on. Here the handler goes on within the pass
that received the answer (`_apply` runs the callbacks itself: it is only
ever called from a callback of its own, never inside a task's step).
"""

from __future__ import annotations

import asyncio
import contextvars
import threading
from typing import Any, Callable, Generator, Iterable

__all__ = ["Gather", "Reply", "resolve_batch"]

_PENDING, _DONE, _CANCELLED = range(3)
Callback = Callable[[Any], object]


class Reply:
    __slots__ = ("_value", "_error", "_event", "_loop", "_state", "_callbacks", "_cancel_message",
                 "_asyncio_future_blocking")

    def __init__(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self._value: Any = None  # written by the shard's thread; read on the loop only once _DONE
        self._error: BaseException | None = None
        self._loop = loop
        self._event = None if loop is not None else threading.Event()
        self._state = _PENDING  # the loop's view; the shard's thread never touches it
        self._callbacks: list[tuple[Callback, contextvars.Context | None]] = []
        self._cancel_message: Any = None
        # None: a blocking reply is no future (asyncio.isfuture says no); False: an asyncio one.
        self._asyncio_future_blocking: bool | None = None if loop is None else False

    @classmethod
    def here(cls) -> Reply:
        """A reply for the calling context: asyncio-aware when a loop runs."""
        return cls(asyncio._get_running_loop())

    @classmethod
    def resolved(cls, value: Any) -> Reply:
        """An answer known at once, in the calling context's flavour."""
        reply = cls.here()
        reply.set(value)
        if reply._loop is None:
            reply._wake()
        else:
            reply._apply()  # (nobody can wait on it yet: no callbacks run inside the caller)
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
        """asyncio waiters: called on the loop's own thread, outside any task."""
        if self._state != _PENDING:
            return  # cancelled meanwhile: the answer has nobody to go to
        self._state = _DONE
        callbacks, self._callbacks = self._callbacks, []
        for fn, context in callbacks:
            try:
                if context is None:
                    fn(self)
                else:
                    context.run(fn, self)
            except Exception as exc:  # noqa: BLE001 - as the loop would treat a failing callback
                self._loop.call_exception_handler(  # type: ignore[union-attr]
                    {"message": f"a callback of a reply failed: {fn!r}", "exception": exc, "future": self})

    def done(self) -> bool:
        """Has the answer come (and been released to waiters)?"""
        if self._event is not None:
            return self._event.is_set()
        return self._state != _PENDING

    def wait(self, timeout: float | None = 30.0) -> Any:
        if self._event is None:
            raise RuntimeError("an asyncio reply must be awaited")
        if not self._event.wait(timeout):
            raise TimeoutError("the engine did not answer in time")
        if self._error is not None:
            raise self._error
        return self._value

    # -- asyncio's future protocol (loop replies only) ---------------------------------
    def get_loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            raise RuntimeError("a blocking reply has no event loop")
        return self._loop

    def cancelled(self) -> bool:
        return self._state == _CANCELLED

    def cancel(self, msg: Any = None) -> bool:
        """Stop waiting (the shard still applies the command: it was accepted)."""
        if self._loop is None or self._state != _PENDING:
            return False
        self._state = _CANCELLED
        self._cancel_message = msg
        callbacks, self._callbacks = self._callbacks, []
        for fn, context in callbacks:
            self._loop.call_soon(fn, self, context=context)  # (inside the canceller's step: not now)
        return True

    def _make_cancelled_error(self) -> asyncio.CancelledError:
        return asyncio.CancelledError() if self._cancel_message is None else asyncio.CancelledError(self._cancel_message)

    def _check_done(self) -> None:
        if self._state == _CANCELLED:
            raise self._make_cancelled_error()
        if self._state != _DONE:
            raise asyncio.InvalidStateError("the reply has not come yet")

    def result(self) -> Any:
        self._check_done()
        if self._error is not None:
            raise self._error
        return self._value

    def exception(self) -> BaseException | None:
        self._check_done()
        return self._error

    def add_done_callback(self, fn: Callback, *, context: contextvars.Context | None = None) -> None:
        if self._loop is None:
            raise RuntimeError("a blocking reply must be waited on with wait()")
        if self._state != _PENDING:
            self._loop.call_soon(fn, self, context=context)
        else:
            self._callbacks.append((fn, context))

    def remove_done_callback(self, fn: Callback) -> int:
        kept = [(f, c) for f, c in self._callbacks if f != fn]
        removed = len(self._callbacks) - len(kept)
        self._callbacks = kept
        return removed

    def __await__(self) -> Generator[Any, None, Any]:
        if self._loop is None:
            raise RuntimeError("a blocking reply must be waited on with wait()")
        if self._state == _PENDING:
            self._asyncio_future_blocking = True
            yield self  # the task (or lean door) hangs its wake-up on us
        return self.result()

    __iter__ = __await__


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
