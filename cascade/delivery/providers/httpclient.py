"""A lean HTTP/1.1 client for webhook posts: asyncio Protocols on keep-alive
connections, responses parsed by `httptools` (llhttp, in C).

Only what the webhook provider needs, and cheap per request:
- `POST` with a body, one `transport.write` a request; the answer is its
  status code and `Retry-After`; response bodies (Content-Length, chunked, or
  up to the close) are parsed and skipped, never kept;
- one pool per origin (scheme, host, port): at most `max_connections`
  requests in flight, so at most that many connections; idle connections are
  reused last-in first-out (the hot ones stay hot) and closed after
  `idle_timeout_s` unused; `Connection: close` (or HTTP/1.0) answers close
  theirs; a connection the server closed while idle is dropped;
- a request that fails on a *reused* connection before any byte of an answer
  arrived is sent once more on a new connection: the server may have closed
  it idle as we wrote (a keep-alive race). The request may have been seen
  twice: callers send an idempotency key;
- `timeout_s` bounds each request as a whole (waiting for a free slot,
  connecting and the TLS handshake included, up to the answer's last byte);
  it is the same for every request of a client, so deadlines come in order
  and one timer a pool (re-armed at most once a `timeout_s`) watches them
  all, instead of a timer handle a request;
- `https://` uses the loop's TLS (`create_connection(ssl=...)`).

Errors: `TimeoutError` (the whole request), `OSError` (connecting),
`HttpClientError` (connection closed before the answer, a malformed answer,
the client closed).
"""

from __future__ import annotations

import asyncio
import collections
import ssl
from collections.abc import Awaitable
from typing import Any, cast
from urllib.parse import urlsplit

import httptools

__all__ = ["ConnectionClosed", "HttpClient", "HttpClientError", "ProtocolError", "Response", "Target"]

Response = tuple[int, bytes | None]
_READ_BUFFER = 65536  # (status code, raw Retry-After value or None)


class HttpClientError(Exception):
    """The request failed on the wire (not a timeout, not a connect error)."""


class ConnectionClosed(HttpClientError):
    """The connection ended before the whole answer arrived."""

    def __init__(self, message: str, *, answered: bool) -> None:
        super().__init__(message)
        self.answered = answered  # some byte of an answer had arrived


class ProtocolError(HttpClientError):
    """The answer was not HTTP/1.x as we read it."""


class Target:
    """A prepared request target: the origin it is sent to and the request
    line with the fixed headers, as bytes."""

    __slots__ = ("origin", "host", "port", "tls", "head")

    def __init__(self, url: str, headers: dict[str, str] | None = None, user_agent: str = "cascade") -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"url {url!r} is not an absolute http:// or https:// URL")
        self.tls = parts.scheme == "https"
        self.host = parts.hostname
        self.port = parts.port or (443 if self.tls else 80)
        self.origin = (parts.scheme, self.host, self.port)
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        host_header = f"[{self.host}]" if ":" in self.host else self.host
        if parts.port is not None and parts.port != (443 if self.tls else 80):
            host_header += f":{parts.port}"
        lines = [f"POST {path} HTTP/1.1", f"Host: {host_header}", f"User-Agent: {user_agent}"]
        for name, value in (headers or {}).items():
            _check_header(name, value)
            lines.append(f"{name}: {value}")
        self.head = ("\r\n".join(lines) + "\r\n").encode("latin-1")


def _check_header(name: str, value: str) -> None:
    if not name or any(c in name for c in ":\r\n ") or "\r" in value or "\n" in value:
        raise ValueError(f"header {name!r}: {value!r} is not allowed")


class HttpClient:
    """Keep-alive POSTs to any number of origins; see the module doc.

    Bound to the event loop it first posts on; `close()` closes every
    connection, and a later `post` starts afresh."""

    def __init__(
        self,
        *,
        timeout_s: float,
        max_connections: int = 256,
        idle_timeout_s: float = 15.0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        if not timeout_s > 0:
            raise ValueError(f"timeout_s {timeout_s!r} is not allowed; it must be greater than 0")
        if max_connections < 1:
            raise ValueError(f"max_connections {max_connections!r} is not allowed; it must be at least 1")
        self.timeout_s = float(timeout_s)
        self.max_connections = max_connections
        self.idle_timeout_s = float(idle_timeout_s)
        self._ssl_context = ssl_context
        self._pools: dict[tuple[str, str, int], _Pool] = {}

    def post(self, target: Target, body: bytes, headers: bytes = b"") -> Awaitable[Response]:
        """POST `body` to `target`; `headers` are extra header lines, each
        ending in CRLF. Answers (status, Retry-After or None)."""
        pool = self._pools.get(target.origin)
        if pool is None or pool.loop.is_closed():
            pool = self._pools[target.origin] = _Pool(self, target)
        return pool.post(b"%s%sContent-Length: %d\r\n\r\n%s" % (target.head, headers, len(body), body))

    def connections(self) -> int:
        """Connections open or being opened, all origins."""
        return sum(pool.open for pool in self._pools.values())

    async def close(self) -> None:
        pools, self._pools = list(self._pools.values()), {}
        for pool in pools:
            await pool.close()

    def _tls_context(self) -> ssl.SSLContext:
        if self._ssl_context is None:
            self._ssl_context = ssl.create_default_context()
        return self._ssl_context


class _Pool:
    """The connections to one origin, on one loop."""

    def __init__(self, client: HttpClient, target: Target) -> None:
        self.loop = asyncio.get_running_loop()
        self.client = client
        self.host, self.port, self.tls = target.host, target.port, target.tls
        self.timeout_s = client.timeout_s
        self.idle: collections.deque[_Connection] = collections.deque()  # most recently used last
        self.open = 0  # connections open or being opened
        self.in_flight = 0  # requests holding a slot; at most `limit`
        self.limit = client.max_connections
        self._slot_waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self.closed = False
        # (deadline, connection, its request number), in the order requests
        # started: deadlines are increasing. One timer, for the first live one.
        self._deadlines: collections.deque[tuple[float, _Connection, int]] = collections.deque()
        self._timer: asyncio.TimerHandle | None = None
        self._all: set[_Connection] = set()
        # Every read lands here and is parsed at once (get_buffer, recv_into,
        # buffer_updated run back to back), so the connections share it.
        self.buffer = memoryview(bytearray(_READ_BUFFER))

    async def post(self, request: bytes) -> Response:
        if self.closed:
            raise HttpClientError("the client is closed")
        deadline = self.loop.time() + self.timeout_s
        if self.in_flight < self.limit and not self._slot_waiters:
            self.in_flight += 1
        else:
            await self._wait_for_slot()
        try:
            idle = self.idle
            while idle:
                conn = idle.pop()
                if conn.ready():
                    try:
                        return await conn.request(request, deadline)
                    except ConnectionClosed as exc:
                        if exc.answered:
                            raise
                        # Closed by the server while idle, as we wrote: once more, on a new connection.
                    except asyncio.CancelledError:
                        conn.abort()  # its answer is nobody's now
                        raise
                    break
            conn = await self._connect(deadline)
            try:
                return await conn.request(request, deadline)
            except asyncio.CancelledError:
                conn.abort()
                raise
        finally:
            self._release_slot()

    async def _wait_for_slot(self) -> None:
        waiter = self.loop.create_future()
        self._slot_waiters.append(waiter)
        try:
            await asyncio.wait_for(waiter, self.timeout_s)
        except asyncio.TimeoutError:
            raise TimeoutError(f"no free connection within {self.timeout_s:g} s") from None
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self._release_slot()  # handed a slot as we were cancelled: pass it on
            raise

    def _release_slot(self) -> None:
        waiters = self._slot_waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)  # the slot goes to it: in_flight stays
                return
        self.in_flight -= 1

    async def _connect(self, deadline: float) -> _Connection:
        if self.closed:
            raise HttpClientError("the client is closed")
        self.open += 1
        conn = _Connection(self)
        self._all.add(conn)
        try:
            tls: Any = self.client._tls_context() if self.tls else None
            coro = self.loop.create_connection(lambda: conn, self.host, self.port, ssl=tls,
                                               server_hostname=self.host if tls is not None else None)
            remaining = deadline - self.loop.time()
            if remaining <= 0:
                coro.close()
                raise TimeoutError(f"no answer within {self.timeout_s:g} s")
            try:
                await asyncio.wait_for(coro, remaining)
            except asyncio.TimeoutError:
                raise TimeoutError(f"connecting took over {self.timeout_s:g} s") from None
        except BaseException:
            if conn.transport is None:  # never connected: no connection_lost will come
                self._gone(conn)
                conn.lost.set_result(None)
            conn.abort()
            raise
        if conn.closing:  # the client closed meanwhile
            conn.abort()
            raise HttpClientError("the client is closed")
        return conn

    # -- called by connections -------------------------------------------------

    def watch(self, deadline: float, conn: _Connection, number: int) -> None:
        self._deadlines.append((deadline, conn, number))
        if self._timer is None:
            self._timer = self.loop.call_at(deadline, self._expire)

    def reuse(self, conn: _Connection) -> None:
        """`conn` answered and stays open: it is idle now."""
        idle = self.idle
        now = self.loop.time()
        conn.idle_since = now
        idle.append(conn)
        oldest = idle[0]
        if now - oldest.idle_since > self.client.idle_timeout_s and oldest is not conn:
            idle.popleft()
            oldest.close()

    def _gone(self, conn: _Connection) -> None:
        """`conn` is closed (or never opened): it no longer counts."""
        if conn in self._all:
            self._all.discard(conn)
            self.open -= 1

    def _expire(self) -> None:
        self._timer = None
        now = self.loop.time()
        deadlines = self._deadlines
        while deadlines:
            deadline, conn, number = deadlines[0]
            if not conn.busy(number):
                deadlines.popleft()  # answered long ago
            elif deadline <= now:
                deadlines.popleft()
                conn.time_out()
            else:
                self._timer = self.loop.call_at(deadline, self._expire)
                break

    async def close(self) -> None:
        self.closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._deadlines.clear()
        self.idle.clear()
        conns = list(self._all)
        for conn in conns:
            conn.close(HttpClientError("the client is closed"))
        if conns:
            await asyncio.wait([conn.lost for conn in conns], timeout=1.0)
            for conn in conns:
                conn.abort()  # whatever a TLS shutdown left hanging
            await asyncio.wait([conn.lost for conn in conns], timeout=1.0)


class _Connection(asyncio.BufferedProtocol):
    """One keep-alive connection: at most one request at a time."""

    def __init__(self, pool: _Pool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.lost: asyncio.Future[None] = pool.loop.create_future()
        self.idle_since = 0.0
        self.waiter: asyncio.Future[Response] | None = None
        self.number = 0  # requests sent on it; the first is 1
        self.status = 0  # of the answer being read
        self.retry_after: bytes | None = None
        self.answered = False  # a byte of the current answer arrived
        self.headers_done = False
        self.closing = False

    # -- the client's side -----------------------------------------------------

    def ready(self) -> bool:
        return not self.closing and self.transport is not None and not self.transport.is_closing()

    def busy(self, number: int) -> bool:
        return self.number == number and self.waiter is not None

    def request(self, data: bytes, deadline: float) -> asyncio.Future[Response]:
        transport = self.transport
        assert transport is not None and self.waiter is None
        self.waiter = waiter = self.pool.loop.create_future()
        self.number += 1
        self.status = 0
        self.retry_after = None
        self.answered = self.headers_done = False
        self.pool.watch(deadline, self, self.number)
        try:
            transport.write(data)
        except Exception as exc:  # uvloop refuses writes on a closed handle
            self._fail(ConnectionClosed(f"the connection closed before the request was sent: {exc}", answered=False))
        return waiter

    def time_out(self) -> None:
        self._fail(TimeoutError(f"no answer within {self.pool.timeout_s:g} s"))

    def close(self, exc: Exception | None = None) -> None:
        self.closing = True
        if exc is not None and self.waiter is not None:
            self._fail(exc)
        elif self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        self.closing = True
        if self.transport is not None:
            self.transport.abort()

    def _fail(self, exc: Exception) -> None:
        waiter, self.waiter = self.waiter, None
        self.abort()  # half a request or half an answer: the connection is unusable
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)

    # -- asyncio.Protocol ------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, only alike.
        self.transport = cast(asyncio.Transport, transport)
        if self.closing:  # closed while connecting
            self.transport.abort()

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.pool.buffer

    def buffer_updated(self, nbytes: int) -> None:
        if self.waiter is None:
            self._fail(ProtocolError("bytes arrived with no request outstanding"))
            return
        self.answered = True
        try:
            self.parser.feed_data(self.pool.buffer[:nbytes])
        except httptools.HttpParserError as exc:
            self._fail(ProtocolError(f"malformed answer: {exc}"))

    def eof_received(self) -> bool | None:
        return None  # close our side too; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        self.pool._gone(self)
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            if self.headers_done:
                # The status line and headers are in; the body ended with the
                # connection (a body read to the close, or one cut short):
                # the status is the answer either way.
                waiter.set_result((self.status, self.retry_after))
            else:
                reason = f": {exc}" if exc is not None else ""
                waiter.set_exception(ConnectionClosed(
                    f"the connection closed before the answer{reason}", answered=self.answered))
        if not self.lost.done():
            self.lost.set_result(None)

    # -- httptools callbacks ---------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        if len(name) == 11 and name.lower() == b"retry-after":
            self.retry_after = value

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()
        self.headers_done = self.status >= 200

    def on_message_complete(self) -> None:
        status = self.status
        if status < 200:  # 1xx: informational, the answer follows
            self.retry_after = None
            return
        waiter, self.waiter = self.waiter, None
        if waiter is None:  # a second answer in the same bytes: not HTTP as we speak it
            self.abort()
            return
        if self.parser.should_keep_alive() and not self.closing:
            self.pool.reuse(self)
        else:
            self.close()
        if not waiter.done():
            waiter.set_result((status, self.retry_after))
