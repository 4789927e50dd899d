"""The lean door's listening socket, accepted from by cascade itself.

Why not `loop.create_server`: under a flood of new connections uvloop
accepted only about a thousand a second while reading thousands of
requests from open ones, so the kernel's accept queue stayed full for
seconds (`bench/e2e.py` at 6,000 offered sends/s). A request on a
connection in that queue has reached the machine but not the server: no
stamp, no watermark can count it, and a click waiting there let its window
close (API.md rule 11). Here every readiness of the socket drains the whole
queue (up to the backlog), so a connection waits at most one loop pass
before its first request can be read.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
from typing import Callable

__all__ = ["Acceptor"]

_log = logging.getLogger("cascade.http")
_GONE = (errno.ECONNABORTED, errno.EPROTO, errno.ENETDOWN, errno.EHOSTUNREACH, errno.ENETUNREACH)
_EXHAUSTED = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)
_PAUSE_S = 0.1  # out of descriptors: stop accepting this long (the kernel keeps queueing meanwhile)


class Acceptor:
    def __init__(self, loop: asyncio.AbstractEventLoop, sock: socket.socket,
                 protocol_factory: Callable[[], asyncio.Protocol], backlog: int) -> None:
        self.loop = loop
        self.sock = sock
        self.factory = protocol_factory
        self.backlog = backlog
        self.closed = False
        self._attaching: set[asyncio.Task[None]] = set()  # the loop keeps only weak references to tasks
        self.port = int(sock.getsockname()[1])
        sock.setblocking(False)
        loop.add_reader(sock.fileno(), self._ready)

    @classmethod
    def listen(cls, loop: asyncio.AbstractEventLoop, host: str, port: int, backlog: int, reuse_port: bool,
               protocol_factory: Callable[[], asyncio.Protocol]) -> Acceptor:
        """Bind the first address `host` resolves to (a name such as localhost: its first address)."""
        family, _, _, _, address = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM,
                                                      flags=socket.AI_PASSIVE)[0]
        sock = socket.create_server(address[:2], family=family, backlog=backlog, reuse_port=reuse_port)
        return cls(loop, sock, protocol_factory, backlog)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.loop.remove_reader(self.sock.fileno())
        self.sock.close()

    def _ready(self) -> None:
        for _ in range(self.backlog):
            try:
                conn, _ = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in _GONE:
                    continue  # the client gave up while queued
                if exc.errno in _EXHAUSTED:
                    _log.error("accept: %s; pausing %g s", exc, _PAUSE_S)
                    self.loop.remove_reader(self.sock.fileno())
                    self.loop.call_later(_PAUSE_S, self._resume)
                    return
                raise
            conn.setblocking(False)  # the loop's transport sets TCP_NODELAY itself
            task = self.loop.create_task(self._attach(conn))
            self._attaching.add(task)
            task.add_done_callback(self._attaching.discard)

    def _resume(self) -> None:
        if not self.closed:
            self.loop.add_reader(self.sock.fileno(), self._ready)

    async def _attach(self, conn: socket.socket) -> None:
        try:
            await self.loop.connect_accepted_socket(self.factory, conn)
        except OSError:  # reset before it was attached
            conn.close()
