"""Retrying JetStream API calls while the cluster cannot answer yet.

A fresh cluster electing its meta leader, a stream leader moving after a
server died, a reconnect, a peer briefly seen offline at placement: each
makes a JetStream API request time out or fail for a moment, and the same
request succeeds a little later. Every bucket and stream operation that
sets a node up or keeps its journal going goes through `retried`, so such
a moment costs a delay, never a failed start. Other errors are raised at
once: they are answers, not silence.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

import nats.errors
from nats.js.errors import APIError, NoStreamResponseError, ServiceUnavailableError

__all__ = ["PLACEMENT", "retried"]

log = logging.getLogger("cascade.cluster")
T = TypeVar("T")
PLACEMENT = (10005,)  # JSClusterNoPeersErrF: "no suitable peers for placement" (a peer briefly seen offline)


def _transient(exc: BaseException) -> bool:
    if isinstance(exc, APIError) and not isinstance(exc, ServiceUnavailableError):
        return exc.err_code in PLACEMENT
    return isinstance(exc, (TimeoutError, nats.errors.TimeoutError, nats.errors.NoRespondersError,
                            NoStreamResponseError, ServiceUnavailableError, APIError))


async def retried(call: Callable[[], Awaitable[T]], what: str, give_up_s: float,
                  give_up: Callable[[Exception], Exception] | None = None) -> T:
    """`await call()`, retried with a growing pause (≤ 0.5 s) while it fails transiently, for at most
    `give_up_s`; then the last failure is raised (through `give_up` if given, to name it)."""
    loop = asyncio.get_running_loop()
    deadline, attempt = loop.time() + give_up_s, 0
    while True:
        try:
            return await call()
        except Exception as exc:
            if not _transient(exc):
                raise
            attempt += 1
            pause = min(0.05 * attempt, 0.5)
            if loop.time() + pause > deadline:
                if give_up is None:
                    raise
                raise give_up(exc) from exc
            log.warning("%s failed (%r); retrying", what, exc)
            await asyncio.sleep(pause)
