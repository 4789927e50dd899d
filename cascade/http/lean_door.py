"""The lean front door: the hot routes (POST /v1/sends, POST /v1/events)
without aiohttp's per-request machinery; every other connection goes to aiohttp.

Why: measured end to end, aiohttp's server spent about 80 µs of CPU on each
request of this path before our code ran (its parser and request objects, a
task per request, its response writer), over a third of a send's whole cost.
Framing a simple request ourselves costs a few microseconds.

What is served here: a request that is `POST <hot path> HTTP/1.1` (or 1.0),
whose head is at most 8 KiB of plain header lines, with one Content-Length of
digits, no Transfer-Encoding, Expect or Upgrade, and a body within
`server.max_body_bytes`. Anything else — another route, a chunked body, a
header we would have to interpret, any doubt — and the connection is handed
to aiohttp for good, with every byte not yet served: aiohttp stays the
reference for framing, errors, 404s, the dashboard and the streams, and no
request is ever framed by both (they could not disagree on where one ends).

A framed request runs through the app's own middlewares and the route's own
handler, given a `LeanRequest` (the part of aiohttp's request they use), so
back-pressure, arrival, auth, error bodies and metrics are the app's, not a
copy. Its handler starts inside the read that framed it, without a task
(`_Steps`), so a signal is on its way to its shard within that pass of the
event loop. Answers go out in request order: a pipelined request waits for
the one before it. Bounds: reading pauses while 256 KiB wait unserved or the socket
does not take our answers; a connection with nothing to do for
`IDLE_TIMEOUT_S` (a half-sent head included) is closed; on shutdown idle
connections close at once and busy ones after their answer.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from email.utils import formatdate
from typing import Any, cast

from aiohttp import web
from aiohttp.web_urldispatcher import AbstractRoute

__all__ = ["LeanDoor", "LeanRequest"]

_log = logging.getLogger("cascade.http")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
MAX_HEAD = 8192  # aiohttp's max_line_size and max_field_size are 8190: longer heads are its to refuse
MAX_HEADERS = 128  # aiohttp's max_headers
MAX_UNSERVED = 256 << 10  # pipelined bytes buffered before reading pauses
IDLE_TIMEOUT_S = 75.0  # aiohttp's keep-alive timeout
_SWEEP_S = 5.0
_TOKEN = frozenset(b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
_REFUSED = frozenset({b"transfer-encoding", b"expect", b"upgrade"})  # aiohttp's to interpret
_VERSIONS = {b"HTTP/1.1": True, b"HTTP/1.0": False}  # -> keep-alive unless told otherwise


class _Headers(dict[str, str]):
    """Header names stored lower-case; looked up in any case, as aiohttp's are.
    Not aiohttp's CIMultiDict: built per request, it cost 0.015-0.02 ms more
    a send end to end (0.635, 0.638 against 0.618, 0.623 ms at 1,000/s)."""

    def get(self, name: str, default: Any = None) -> Any:
        return dict.get(self, name.lower(), default)

    def __getitem__(self, name: str) -> str:
        return dict.__getitem__(self, name.lower())

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and dict.__contains__(self, name.lower())


class _MatchInfo(dict[str, str]):
    def __init__(self, route: AbstractRoute) -> None:
        super().__init__()
        self.route = route


class LeanRequest:
    """What the middlewares and the hot handlers read of an aiohttp request:
    method, path, headers, content type and length, the body, match_info's
    route, and request-scoped keys. A handler that needed more would fail
    its tests through this door (tests/http/test_lean_door.py)."""

    __slots__ = ("method", "path", "headers", "content_length", "match_info", "_body", "_state")

    def __init__(self, method: str, path: str, headers: _Headers, body: bytes, route: AbstractRoute) -> None:
        self.method = method
        self.path = path
        self.headers = headers
        self.content_length = len(body)
        self.match_info = _MatchInfo(route)
        self._body = body
        self._state: dict[Any, Any] = {}

    @property
    def content_type(self) -> str:
        header: str | None = self.headers.get("content-type")
        if not header:
            return "application/octet-stream"  # as aiohttp reads a missing one
        return header.partition(";")[0].strip().lower()

    async def read(self) -> bytes:
        return self._body

    def get(self, key: Any, default: Any = None) -> Any:
        return self._state.get(key, default)

    def __getitem__(self, key: Any) -> Any:
        return self._state[key]

    def __setitem__(self, key: Any, value: Any) -> None:
        self._state[key] = value


class _Hot:
    """A hot route: its aiohttp route (metrics labels, the front's table) and
    its handler wrapped in the app's middlewares, outermost first."""

    def __init__(self, route: AbstractRoute, middlewares: Iterable[Any]) -> None:
        self.route = route
        handler: Handler = route.handler
        for middleware in reversed(list(middlewares)):
            handler = _wrap(middleware, handler)
        self.handle = handler


def _wrap(middleware: Any, inner: Handler) -> Handler:
    async def layer(request: web.Request) -> web.StreamResponse:
        return cast(web.StreamResponse, await middleware(request, inner))
    return layer


class LeanDoor:
    """The protocol factory of the listening socket (see the module doc)."""

    def __init__(self, app: web.Application, hot: dict[tuple[str, str], AbstractRoute],
                 aiohttp_factory: Callable[[], asyncio.Protocol], max_body_bytes: int,
                 gate: Callable[[web.Request], tuple[web.Response, str] | None] | None = None) -> None:
        self._hot = {(m.encode(), p.encode()): _Hot(r, app.middlewares) for (m, p), r in hot.items()}
        # The app's refusal before a handler runs and the request's id (app.py `_Front.gate`), answered
        # at once; the same response stands for a run of refusals, so its bytes are kept.
        self.gate = gate
        self._refusal: tuple[web.StreamResponse | None, bytes, bytes] = (None, b"", b"")
        self._aiohttp = aiohttp_factory
        self.max_body_bytes = max_body_bytes
        self.connections: set[_Connection] = set()
        self.closing = False
        self._busy = 0  # connections with a request being answered
        self._idle = asyncio.Event()
        self._idle.set()
        self._sweeper: asyncio.Task[None] | None = None
        self._date_at, self._date = 0, b""

    def __call__(self) -> asyncio.Protocol:
        if self._sweeper is None:
            self._sweeper = asyncio.get_running_loop().create_task(self._sweep())
        return _Connection(self)

    def hot(self, method: bytes, target: bytes) -> _Hot | None:
        return self._hot.get((method, target))

    def hand_off(self) -> asyncio.Protocol:
        return self._aiohttp()

    def refusal_bytes(self, response: web.StreamResponse) -> tuple[bytes, bytes]:
        """`_head(response)`, encoded once for a run of requests the gate refuses alike."""
        last, head, body = self._refusal
        if response is not last:
            head, body = _head(response)
            self._refusal = (response, head, body)  # (held: its id is not reused while it is compared)
        return head, body

    def date(self) -> bytes:
        now = int(time.time())
        if now != self._date_at:
            self._date_at, self._date = now, formatdate(now, usegmt=True).encode()
        return self._date

    def began(self) -> None:
        self._busy += 1
        self._idle.clear()

    def ended(self) -> None:
        self._busy -= 1
        if not self._busy:
            self._idle.set()

    async def shutdown(self, timeout_s: float) -> None:
        """Close idle connections now and busy ones after their answer; wait up to timeout_s."""
        self.closing = True
        if self._sweeper is not None:
            self._sweeper.cancel()
        for connection in list(self.connections):
            if not connection.busy:
                connection.close()
        try:
            await asyncio.wait_for(self._idle.wait(), timeout_s)
        except TimeoutError:
            _log.warning("lean door: %d requests still in flight after %g s; closing their connections",
                         self._busy, timeout_s)
        for connection in list(self.connections):
            connection.close()

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(_SWEEP_S)
            quiet_since = time.monotonic() - IDLE_TIMEOUT_S
            for connection in list(self.connections):
                if not connection.busy and connection.last_activity < quiet_since:
                    connection.close()


class _Connection(asyncio.Protocol):
    def __init__(self, door: LeanDoor) -> None:
        self.door = door
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.busy = False
        self.last_activity = time.monotonic()
        self._reading_paused = False
        self._writing_paused = False
        self._eof = False
        self._inline = False  # the first step of a request's handler is running inside `_next`
        self._go_on = True  # the last answer left the connection open

    # -- asyncio.Protocol -------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.door.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.door.connections.discard(self)
        self.transport = None

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        self.last_activity = time.monotonic()
        if not self.busy:
            self._next()
        elif len(self.buffer) > MAX_UNSERVED and not self._reading_paused and self.transport is not None:
            self._reading_paused = True
            self.transport.pause_reading()

    def eof_received(self) -> bool:
        self._eof = True
        if self.busy:
            return True  # answer first, then close
        if self.buffer:
            self._hand_off()  # a partial request: aiohttp says what is wrong with it
            return True
        return False

    def pause_writing(self) -> None:
        self._writing_paused = True

    def resume_writing(self) -> None:
        self._writing_paused = False
        if not self.busy:
            self._next()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    # -- framing ----------------------------------------------------------------
    def _next(self) -> None:
        """Serve the buffered requests the gate refuses, then the next one (in a task), wait for more
        bytes, or hand off."""
        while True:
            if self._writing_paused or self.transport is None:
                return
            if self.door.closing:
                self.close()
                return
            if self._reading_paused:
                self._reading_paused = False
                self.transport.resume_reading()
            buffer = self.buffer
            end = buffer.find(b"\r\n\r\n", 0, MAX_HEAD)
            if end < 0:
                if len(buffer) >= MAX_HEAD or self._eof:
                    self._hand_off()
                return
            framed = self._frame(bytes(buffer[:end]))
            if framed is None:
                self._hand_off()
                return
            hot, method, path, headers, length, keep_alive = framed
            start = end + 4
            if len(buffer) < start + length:
                if self._eof:
                    self._hand_off()
                return  # the body is still coming (bounded: length <= max_body_bytes)
            body = bytes(buffer[start:start + length])
            del buffer[:start + length]
            request = LeanRequest(method, path, headers, body, hot.route)
            # Refused at once, without a task: under overload most sends are, and the task and
            # middleware layers were a third of a refusal's loop time.
            refused = self.door.gate(cast(web.Request, request)) if self.door.gate is not None else None
            if refused is None:
                self.busy = True
                self.door.began()
                self._inline = True
                try:
                    _Steps(self._serve(hot, request, keep_alive))
                finally:
                    self._inline = False
                if self.busy or not self._go_on:
                    return  # answered later, when what it waits on is done; or the connection closed
                continue  # answered at once (a validation error): on to the next request
            if not self._answer(self._refuse(request, *refused, keep_alive), keep_alive):
                return

    def _frame(self, head: bytes) -> tuple[_Hot, str, str, _Headers, int, bool] | None:
        """A simple request for a hot route, or None: hand the connection to aiohttp."""
        lines = head.split(b"\r\n")
        parts = lines[0].split(b" ")
        if len(parts) != 3 or len(lines) > MAX_HEADERS + 1:
            return None
        method, target, version = parts
        keep_alive = _VERSIONS.get(version)
        hot = self.door.hot(method, target)
        if hot is None or keep_alive is None:
            return None
        headers = _Headers()
        length: int | None = None
        for line in lines[1:]:
            name, sep, value = line.partition(b":")
            if not sep or not name or not _TOKEN.issuperset(name) or b"\n" in value or b"\r" in value \
                    or b"\x00" in value:
                return None  # obs-fold, a bare CR or LF, a bad name: aiohttp's to judge
            key = name.lower()
            if key in _REFUSED:
                return None
            text = value.strip(b" \t").decode("latin-1")
            if key == b"content-length":
                if length is not None or not text.isdigit() or not text.isascii():
                    return None
                length = int(text)
            elif key == b"connection":
                tokens = {t.strip().lower() for t in text.split(",")}
                if "close" in tokens:
                    keep_alive = False
                elif "keep-alive" in tokens:
                    keep_alive = True
            k = key.decode("latin-1")
            headers[k] = f"{headers[k]}, {text}" if dict.__contains__(headers, k) else text
        if length is None or length > self.door.max_body_bytes:
            return None  # no length: aiohttp reads to the end or refuses; too long: its 413
        return hot, method.decode(), target.decode(), headers, length, keep_alive

    def _hand_off(self) -> None:
        transport = self.transport
        if transport is None:
            return
        self.door.connections.discard(self)
        self.transport = None
        handler = self.door.hand_off()
        transport.set_protocol(handler)
        handler.connection_made(transport)
        if self._reading_paused:
            transport.resume_reading()
        if self.buffer:
            handler.data_received(bytes(self.buffer))
            self.buffer.clear()
        if self._eof:
            handler.eof_received()

    # -- answering --------------------------------------------------------------
    async def _serve(self, hot: _Hot, request: LeanRequest, keep_alive: bool) -> None:
        try:
            response = await hot.handle(cast(web.Request, request))
            if response.keep_alive is False:
                keep_alive = False
            payload = self._encode(response, keep_alive)
        except Exception:  # noqa: BLE001 - the middlewares map every error; this is a bug in the door itself
            payload = self._failed(request)
        finally:
            self.busy = False
            self.door.ended()
        self._go_on = self._answer(payload, keep_alive)
        if self._go_on and self.buffer and not self._inline:
            self._next()  # (inline, `_next` goes on itself: no recursion per pipelined request)

    def _refuse(self, request: LeanRequest, response: web.StreamResponse, request_id: str, keep_alive: bool) -> bytes:
        try:
            head, body = self.door.refusal_bytes(response)
        except Exception:  # noqa: BLE001 - a bug in the door itself
            return self._failed(request)
        return self._assemble(head, body, keep_alive, b"X-Request-Id: %s\r\n" % request_id.encode("latin-1"))

    @staticmethod
    def _failed(request: LeanRequest) -> bytes:
        _log.exception("lean door: %s %s failed", request.method, request.path)
        return _INTERNAL

    def _answer(self, payload: bytes, keep_alive: bool) -> bool:
        """Write an answer; whether the connection goes on to its next request."""
        transport = self.transport
        if transport is None:
            return False  # the client went away meanwhile
        transport.write(payload)
        if not keep_alive or payload is _INTERNAL or self._eof or self.door.closing:
            transport.close()
            return False
        return True

    def _encode(self, response: web.StreamResponse, keep_alive: bool) -> bytes:
        return self._assemble(*_head(response), keep_alive)

    def _assemble(self, head: bytes, body: bytes, keep_alive: bool, extra: bytes = b"") -> bytes:
        return b"%s\r\nDate: %s\r\n%sConnection: %s\r\n\r\n%s" % (
            head, self.door.date(), extra, b"keep-alive" if keep_alive else b"close", body)


def _head(response: web.StreamResponse) -> tuple[bytes, bytes]:
    """A hot route's answer as bytes: its status line and headers but Date and Connection (the
    connection's own), and its body."""
    body = cast(web.Response, response).body
    if not isinstance(body, bytes):
        raise TypeError(f"a hot route answered a {type(body).__name__} body; it must be bytes")
    lines = [b"HTTP/1.1 %d %s" % (response.status, response.reason.encode("latin-1")),
             b"Content-Length: %d" % len(body)]
    for name, value in response.headers.items():
        if name.lower() not in ("content-length", "date", "connection"):
            lines.append(f"{name}: {value}".encode("latin-1"))
    return b"\r\n".join(lines), body


class _Steps:
    """Runs a request's coroutine without a task: its first step at once, inside the caller (the
    `data_received` that framed the request), and each later step when the future it waits on is
    done, in the request's own context as a task would.

    Why: a task's first step waits for the next pass of the event loop, and under load a pass is
    what the loop lags by: a signal's answer took about five of them (framing, the handler, the
    tell to its shard, the reply, the answer), so each of them counted. The handlers of the hot
    routes need nothing of a task (no timeouts or cancellation: tests/http/test_lean_door.py)."""

    __slots__ = ("_coro", "_context")

    def __init__(self, coro: Coroutine[Any, Any, None]) -> None:
        self._coro = coro
        self._context = contextvars.copy_context()
        self._step()

    def _step(self, _done: Any = None) -> None:
        try:
            awaited = self._context.run(self._coro.send, None)
        except StopIteration:
            return
        except BaseException:  # noqa: BLE001 - `_serve` answers every error: this is a bug in the door
            _log.exception("lean door: a request's handler failed outside its answer")
            return
        if getattr(awaited, "_asyncio_future_blocking", False):
            awaited._asyncio_future_blocking = False
            awaited.add_done_callback(self._step)  # (_step enters the context itself)
        else:  # a bare yield (asyncio.sleep(0)): again on the next pass
            asyncio.get_running_loop().call_soon(self._step)


_INTERNAL_BODY = b'{"error":{"code":"internal","message":"internal error in the server","details":[]}}'
_INTERNAL = (b"HTTP/1.1 500 Internal Server Error\r\nContent-Type: application/json\r\nConnection: close\r\n"
             b"Content-Length: %d\r\n\r\n%s" % (len(_INTERNAL_BODY), _INTERNAL_BODY))
