"""A judgement made once per pass of the running event loop.

Why: under overload one pass reads hundreds of requests, and some checks
(is the server behind? every shard's mailbox, every delivery lane) cost
microseconds each while what they read moves between passes, not within
one: at 12,000 sends/s offered, asking once per request was 6% of the
loop's time. Off a loop (a worker thread, a synchronous test) it judges
at every call.
"""

from __future__ import annotations

import asyncio
from typing import Callable, Generic, TypeVar

__all__ = ["PassMemo"]

T = TypeVar("T")


class PassMemo(Generic[T]):
    def __init__(self, judge: Callable[[], T]) -> None:
        self._judge = judge
        self._fresh = False  # set and cleared on the loop's thread only
        self._value: T | None = None

    def __call__(self) -> T:
        if self._fresh:
            return self._value  # type: ignore[return-value]
        value = self._judge()
        loop = asyncio._get_running_loop()
        if loop is not None:
            self._value, self._fresh = value, True
            loop.call_soon(self._forget)
        return value

    def _forget(self) -> None:
        self._fresh = False
