"""The inbox stream: `GET /v1/recipients/{id}/inbox/stream`, Server-Sent
Events pushed from the engine, never polled per stream.

Owns the bridge from the shards to the open streams, and the streams:

- The engine reports each live inbox change on a shard's thread
  (`Engine.watch_inbox`), but only while some stream is open: with none,
  the shards report nothing and pay nothing. `report` keeps a change only
  when its recipient has a stream open (one dict lookup) and adds it to a
  pending list; the first
  change into an empty list wakes the loop with ONE `call_soon_threadsafe`,
  so changes that land together cross over as one batch.
- On the loop a batch is grouped by recipient, and one engine read
  (`inbox_peek`, which marks nothing) a recipient gives the new entries and
  the unseen count: `message` events, then one `unseen` event, to each of
  that recipient's streams. While a read for a recipient is under way, its
  later changes wait and are read together: at most one read a recipient.
- Bounds: at most `server.max_streams` open (beyond: 503 + Retry-After);
  each stream queues at most `QUEUE_LIMIT` events. A client that falls that
  far behind (it does not read) is cut off, its connection closed: a
  browser's EventSource reconnects and starts again from the current count.
- A stream ends when its client goes away (a write fails; an idle stream
  writes `: ping` every `server.stream_ping_s`, so that is noticed within
  one interval), and every stream ends at once when the app shuts down, so
  shutdown never waits for them.

Streams sit outside the in-flight request bound (the middleware skips
`Route.stream` routes; `max_streams` bounds them instead) and check their
own auth, because EventSource cannot set headers: the recipient token may
come as `?token=`.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import threading
from collections import defaultdict, deque
from typing import Any, AsyncIterator

import msgspec
from aiohttp import web

from ..config import Settings
from ..engine import Engine
from .auth import READ, Authorizer, recipient_token
from .errors import ApiError
from .openapi import Route

__all__ = ["QUEUE_LIMIT", "InboxStreams"]

_log = logging.getLogger("cascade.http")
_encode = msgspec.json.Encoder().encode

QUEUE_LIMIT = 256  # events a stream may have waiting for its client
_PING = b": ping\n\n"
_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no"}  # nginx: pass each event on at once


def _event(name: str, data: Any) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + _encode(data) + b"\n\n"


class _Stream:
    """One open stream: its pending events and the event that wakes its writer."""

    __slots__ = ("rid", "queue", "wake", "closed", "request")

    def __init__(self, rid: str, request: web.Request) -> None:
        self.rid = rid
        self.request = request
        self.queue: deque[bytes] = deque()
        self.wake = asyncio.Event()
        self.closed = False

    def put(self, chunk: bytes) -> None:
        if self.closed:
            return
        if len(self.queue) >= QUEUE_LIMIT:  # a client that does not read: cut it off
            _log.info("inbox stream of %r fell %d events behind; closing it", self.rid, QUEUE_LIMIT,
                      extra={"event": "stream_overflow", "recipient": self.rid})
            self.end(abort=True)
            return
        self.queue.append(chunk)
        self.wake.set()

    def end(self, abort: bool = False) -> None:
        self.closed = True
        self.queue.clear()
        self.wake.set()
        transport = self.request.transport
        if abort and transport is not None:
            # abort, not close: close would wait to flush what the client does not read; this
            # fails the write stuck on the full socket at once, freeing the stream and its buffers
            transport.abort()


class InboxStreams:
    """Every open inbox stream of one app, and the bridge that feeds them."""

    def __init__(self, engine: Engine, settings: Settings) -> None:
        self.engine = engine
        self.max_streams = settings.server.max_streams
        self.ping_s = settings.server.stream_ping_s
        auth = Authorizer(settings.auth)
        self._auth = auth if auth.enabled else None
        self._secret = settings.auth.inbox_secret
        self._by_recipient: dict[str, set[_Stream]] = {}
        self.open = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pending: list[tuple[str, str, str]] = []
        self._lock = threading.Lock()
        self._reading: dict[str, list[str]] = {}  # recipient -> new message ids waiting for its read under way
        self._tasks: set[asyncio.Task[None]] = set()

    # -- wiring ---------------------------------------------------------------
    def route(self) -> Route:
        return Route("GET", "/v1/recipients/{id}/inbox/stream", self.handler, READ,
                     "Server-Sent Events of a recipient's inbox: `unseen` (the count) on connect and after "
                     "every change, `message` (an inbox entry) for each new message, `: ping` while idle",
                     raw_response="text/event-stream", errors=(503,), recipient_token=True, stream=True,
                     query=(("token", "the recipient token, for clients that cannot set X-Recipient-Token "
                                      "(browsers' EventSource)", {"type": "string"}),))

    def install(self, app: web.Application) -> None:
        """Report inbox changes while the app runs; end every stream at shutdown."""
        app.cleanup_ctx.append(self._lifetime)
        app.on_shutdown.append(self._shutdown)

    async def _lifetime(self, _: web.Application) -> AsyncIterator[None]:
        self._loop = asyncio.get_running_loop()
        yield
        self.close_all()
        self.engine.watch_inbox(None)

    async def _shutdown(self, _: web.Application) -> None:
        self.close_all()

    def close_all(self) -> None:
        for streams in list(self._by_recipient.values()):
            for stream in list(streams):
                stream.end()

    # -- the bridge (report: any shard thread; the rest: the loop) --------------
    def report(self, rid: str, message_id: str, kind: str) -> None:
        """Engine.watch_inbox's listener: called inside a shard's batch, so quick."""
        if rid not in self._by_recipient:
            return
        with self._lock:
            first = not self._pending
            self._pending.append((rid, message_id, kind))
        if first and self._loop is not None:
            try:
                self._loop.call_soon_threadsafe(self._drain)
            except RuntimeError:  # the loop has closed: nobody is listening any more
                pass

    def _drain(self) -> None:
        with self._lock:
            batch, self._pending = self._pending, []
        changed: dict[str, list[str]] = defaultdict(list)
        for rid, message_id, kind in batch:
            new = changed[rid]
            if kind == "message":
                new.append(message_id)
        for rid, new in changed.items():
            if rid not in self._by_recipient:
                continue
            waiting = self._reading.get(rid)
            if waiting is not None:  # a read is under way: this change rides on the next one
                waiting.extend(new)
                self._reading[rid] = waiting or [""]  # non-empty: "read again", even with nothing new
                continue
            self._reading[rid] = []
            task = asyncio.ensure_future(self._push(rid, new))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _push(self, rid: str, new: list[str]) -> None:
        try:
            while True:
                try:
                    page = await self.engine.inbox_peek(rid, [m for m in new if m])
                except Exception as exc:  # noqa: BLE001 - stopping or overloaded: the next change retries
                    _log.debug("inbox stream read of %r failed: %s", rid, exc)
                    return
                chunks = [_event("message", m) for m in page["messages"]]
                chunks.append(_event("unseen", {"unseen": page["unseen"]}))
                for stream in list(self._by_recipient.get(rid, ())):
                    for chunk in chunks:
                        stream.put(chunk)
                new = self._reading.get(rid) or []
                if not new:
                    return
                self._reading[rid] = []
        finally:
            self._reading.pop(rid, None)

    # -- one stream -----------------------------------------------------------
    def _authorize(self, request: web.Request, rid: str) -> None:
        if self._auth is None:
            return  # no keys configured: nothing is checked (loopback only), as for every route
        token = request.query.get("token")
        if token is not None and self._secret is not None:
            expected = recipient_token(self._secret, rid).encode()
            if hmac.compare_digest(expected, token.strip().lower().encode("utf-8", "surrogateescape")):
                return
            if "Authorization" not in request.headers and "X-Recipient-Token" not in request.headers:
                raise ApiError(403, "forbidden", f"token is not valid for recipient {rid!r}; "
                               "a token opens its own recipient's inbox only")
        self._auth.check(request, READ, True)

    async def handler(self, request: web.Request) -> web.StreamResponse:
        rid = request.match_info["id"]
        self._authorize(request, rid)
        if self.open >= self.max_streams:
            raise ApiError(503, "overloaded", f"{self.open} inbox streams are open, the most server.max_streams "
                           "allows; retry shortly", headers={"Retry-After": "5"})
        stream = _Stream(rid, request)
        self._by_recipient.setdefault(rid, set()).add(stream)  # before the first read: no change is missed
        self.open += 1
        if self.open == 1:
            self.engine.watch_inbox(self.report)  # the first stream: the shards start reporting
        try:
            page = await self.engine.inbox_peek(rid, [])
            response = web.StreamResponse(headers=_HEADERS)
            await response.prepare(request)
            stream.queue.appendleft(_event("unseen", {"unseen": page["unseen"]}))  # before any change since
            await self._serve(stream, response)
        finally:
            self.open -= 1
            if self.open == 0:
                self.engine.watch_inbox(None)
            streams = self._by_recipient.get(rid)
            if streams is not None:
                streams.discard(stream)
                if not streams:
                    del self._by_recipient[rid]
        return response

    async def _serve(self, stream: _Stream, response: web.StreamResponse) -> None:
        wake = stream.wake
        try:
            while not stream.closed:
                if not stream.queue:
                    wake.clear()
                    try:
                        await asyncio.wait_for(wake.wait(), self.ping_s)
                    except asyncio.TimeoutError:
                        await response.write(_PING)  # also how a client that left is noticed
                    continue
                chunk = b"".join(stream.queue)
                stream.queue.clear()
                await response.write(chunk)
        except (ConnectionError, RuntimeError):  # the client went away (RuntimeError: transport closed)
            stream.closed = True
