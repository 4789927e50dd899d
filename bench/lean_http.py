"""The end-to-end benchmark's own HTTP/1.1: a keep-alive POST client and a
tiny server, on asyncio protocols with httptools (a cascade dependency).

Why not aiohttp, as before: the load generator and the sink share one core,
and aiohttp spent about 0.4 ms of their CPU a send (connection set-up after
every 503, request and response objects), so beyond ~1,000 sends/s the
clients, not the server, fell behind their schedule and the figures measured
them. These speak only what the benchmark needs: `Content-Length` bodies,
keep-alive, `Connection: close`; statuses, `Retry-After` and bodies.
Plain values only (no cascade imports), like e2e_common.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Callable

import httptools

Answer = tuple[int, "bytes | None", bytes]  # status, Retry-After, body


class ClientError(Exception):
    """The connection failed or closed before a whole answer."""


class LeanClient:
    """POSTs to one loopback host:port over at most `limit` keep-alive
    connections, one request at a time on each; `timeout_s` covers the wait
    for a connection too (as aiohttp's total timeout does)."""

    def __init__(self, host: str, port: int, limit: int, timeout_s: float) -> None:
        self.host, self.port, self.limit, self.timeout_s = host, port, limit, timeout_s
        self._prefix = f"Host: {host}:{port}\r\nContent-Type: application/json\r\n".encode()
        self._idle: list[_ClientConnection] = []
        self._waiters: deque[asyncio.Future[_ClientConnection]] = deque()
        self._open = 0

    async def post(self, path: str, body: bytes, on_sent: Callable[[], None] | None = None) -> Answer:
        """The answer, or TimeoutError / ClientError / OSError."""
        data = b"POST %s HTTP/1.1\r\n%sContent-Length: %d\r\n\r\n%s" % (path.encode(), self._prefix, len(body), body)
        conn: _ClientConnection | None = None
        try:
            async with asyncio.timeout(self.timeout_s):
                conn = await self._acquire()
                answer = await conn.request(data, on_sent)
        except BaseException:
            if conn is not None:
                conn.abort()  # an answer may still be on its way: the connection is unusable
            raise
        self._release(conn)
        return answer

    async def _acquire(self) -> _ClientConnection:
        while self._idle:
            conn = self._idle.pop()
            if conn.usable():
                return conn
        if self._open < self.limit:
            self._open += 1
            try:
                _, conn = await asyncio.get_running_loop().create_connection(
                    lambda: _ClientConnection(self), self.host, self.port)
            except BaseException:
                self._open -= 1
                self._wake_one()
                raise
            return conn
        waiter: asyncio.Future[_ClientConnection] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            return await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self._release(waiter.result())  # handed over as the wait ended: pass it on
            raise

    def _release(self, conn: _ClientConnection) -> None:
        if not conn.usable():
            return  # its connection_lost frees the slot
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(conn)
                return
        self._idle.append(conn)

    def _gone(self) -> None:
        self._open -= 1
        self._wake_one()

    def _wake_one(self) -> None:
        """A slot freed up: let the first waiter open a connection of its own."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                asyncio.get_running_loop().create_task(self._open_for(waiter))
                return

    async def _open_for(self, waiter: asyncio.Future[_ClientConnection]) -> None:
        try:
            conn = await self._acquire()
        except Exception as exc:  # noqa: BLE001 - the waiter's request fails with it
            if not waiter.done():
                waiter.set_exception(exc)
            return
        if waiter.done():
            self._release(conn)
        else:
            waiter.set_result(conn)


class _ClientConnection(asyncio.Protocol):
    def __init__(self, client: LeanClient) -> None:
        self.client = client
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.waiter: asyncio.Future[Answer] | None = None
        self.retry_after: bytes | None = None
        self.body: list[bytes] = []
        self.keep = True

    def usable(self) -> bool:
        return self.keep and self.transport is not None and not self.transport.is_closing()

    def request(self, data: bytes, on_sent: Callable[[], None] | None) -> asyncio.Future[Answer]:
        assert self.transport is not None
        self.waiter = asyncio.get_running_loop().create_future()
        self.retry_after, self.body = None, []
        self.transport.write(data)
        if on_sent is not None:
            on_sent()
        return self.waiter

    def abort(self) -> None:
        self.keep = False
        if self.transport is not None:
            self.transport.abort()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(ClientError(f"malformed answer: {exc}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.keep = False
        self._fail(ClientError(f"the connection closed before the answer: {exc}"))
        self.client._gone()

    def _fail(self, exc: Exception) -> None:
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)
        self.abort()

    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() == b"retry-after":
            self.retry_after = value

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        self.keep = self.parser.should_keep_alive()
        waiter, self.waiter = self.waiter, None
        if not self.keep and self.transport is not None:
            self.transport.close()
        if waiter is not None and not waiter.done():
            waiter.set_result((self.parser.get_status_code(), self.retry_after, b"".join(self.body)))


# (method, path, body) -> (status, content type, body)
Handler = Callable[[bytes, bytes, bytes], tuple[int, bytes, bytes]]
_REASONS = {200: b"OK", 404: b"Not Found"}


class LeanServerProtocol(asyncio.Protocol):
    """One connection of a server whose handler answers at once (no await),
    so pipelined requests are answered in order as they are parsed."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.url = b""
        self.body: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            assert self.transport is not None
            self.transport.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            self.transport.close()

    def on_message_begin(self) -> None:
        self.url, self.body = b"", []

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        assert self.transport is not None
        status, ctype, body = self.handler(self.parser.get_method(), self.url, b"".join(self.body))
        keep = self.parser.should_keep_alive()
        self.transport.write(b"HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %d\r\n%s\r\n%s" % (
            status, _REASONS.get(status, b"Other"), ctype, len(body),
            b"" if keep else b"Connection: close\r\n", body))
        if not keep:
            self.transport.close()
