"""One NATS connection on its own asyncio loop thread, callable from any thread.

Shard threads must never wait on the network, and pykka threads cannot
await; so the nats-py client lives on a loop of its own and other threads
hand it work: `run(coro, timeout)` waits for a result (bounded), `call_soon`
only schedules. Journals and leases of many partitions share one client.

Invariants: `run` refuses to be called on the loop thread itself (it would
deadlock); every wait is bounded; `close` drains the connection, stops the
loop and joins the thread within its timeout. The client reconnects on its
own (any server of `servers`) and logs disconnects; requests made while it
is away time out, and callers decide whether to retry.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, TypeVar

import nats
from nats.aio.client import Client
from nats.js import JetStreamContext

__all__ = ["NatsThread"]

log = logging.getLogger("cascade.cluster.nats")
T = TypeVar("T")


class NatsThread:
    """A started nats-py client on a daemon loop thread; `close()` stops both."""

    def __init__(self, servers: Sequence[str], *, name: str = "cascade", connect_timeout_s: float = 10.0,
                 request_timeout_s: float = 5.0) -> None:
        self.servers, self.request_timeout_s = list(servers), request_timeout_s
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run_loop, name=f"nats-loop:{name}", daemon=True)
        self._closed = False
        self._thread.start()
        try:
            self.nc: Client = self.run(self._connect(name, connect_timeout_s), connect_timeout_s + 1.0)
        except BaseException:
            self._stop_loop(5.0)
            raise
        self.js: JetStreamContext = self.nc.jetstream(timeout=request_timeout_s)

    def _run_loop(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_forever()
        finally:
            self.loop.close()

    async def _connect(self, name: str, timeout: float) -> Client:
        async def disconnected() -> None:
            if not self._closed:
                log.warning("nats %s: disconnected", name)

        async def reconnected() -> None:
            log.info("nats %s: reconnected to %s", name, self.nc.connected_url.netloc if self.nc.connected_url else "?")

        async def error(exc: Exception) -> None:
            log.warning("nats %s: %s", name, exc)

        return await nats.connect(
            servers=self.servers, name=name, connect_timeout=max(1, int(timeout)), allow_reconnect=True,
            max_reconnect_attempts=-1, reconnect_time_wait=0.1, disconnected_cb=disconnected,
            reconnected_cb=reconnected, error_cb=error,
        )

    @property
    def on_loop(self) -> bool:
        return threading.current_thread() is self._thread

    def run(self, coro: Coroutine[Any, Any, T], timeout: float) -> T:
        """Run `coro` on the loop and wait at most `timeout` seconds for its result (cancelled after)."""
        if self.on_loop:
            coro.close()
            raise RuntimeError("NatsThread.run called on its own loop thread: await the coroutine instead")
        if self._closed:
            coro.close()
            raise RuntimeError("the NATS client is closed")
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            if future.done():  # the coroutine's own timeout (the same class since 3.11): as it is
                raise
            future.cancel()
            raise TimeoutError(f"NATS operation did not finish within {timeout} s") from None

    def call_soon(self, callback: Callable[..., object], *args: Any) -> None:
        self.loop.call_soon_threadsafe(callback, *args)

    def close(self, timeout: float = 10.0) -> None:
        """Drain and close the connection, stop the loop, join the thread (each bounded by `timeout`)."""
        if self._closed:
            return
        future = asyncio.run_coroutine_threadsafe(self._drain(), self.loop)
        self._closed = True  # from here on run() refuses new work
        try:
            future.result(timeout)
        except Exception:
            log.warning("nats: connection did not close cleanly", exc_info=True)
        self._stop_loop(timeout)

    async def _drain(self) -> None:
        try:
            await asyncio.wait_for(self.nc.drain(), self.request_timeout_s)
        except Exception:
            await self.nc.close()

    def _stop_loop(self, timeout: float) -> None:
        self._closed = True
        if self.loop.is_running():
            future = asyncio.run_coroutine_threadsafe(self._cancel_tasks(), self.loop)
            try:
                future.result(timeout)
            except Exception:
                log.warning("nats: tasks left on the loop did not stop", exc_info=True)
            self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout)

    async def _cancel_tasks(self) -> None:
        """Cancel whatever still runs on the loop (writers of journals never closed) and let it finish."""
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def __enter__(self) -> NatsThread:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
