"""The lean door's listening socket (http/acceptor.py): every connection the
kernel queued is taken and served, on both event loops; closing stops it."""

from __future__ import annotations

import asyncio
import socket
from typing import Callable

import pytest

from cascade.http.acceptor import Acceptor
from cascade.server import event_loop_factory

QUEUED = 300  # connections made while the loop is not looking (all wait in the accept queue)


class Echo(asyncio.Protocol):
    served: list[Echo] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.lost = asyncio.get_running_loop().create_future()
        Echo.served.append(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost.set_result(None)

    def data_received(self, data: bytes) -> None:
        self.transport.write(b"echo:" + data)  # type: ignore[attr-defined]


def _loops() -> list[Callable[[], asyncio.AbstractEventLoop]]:
    factory, _ = event_loop_factory()
    return [asyncio.new_event_loop] + ([factory] if factory is not asyncio.new_event_loop else [])


@pytest.mark.parametrize("new_loop", _loops(), ids=lambda f: f.__module__.partition(".")[0])
def test_every_queued_connection_is_accepted_and_served(new_loop: Callable[[], asyncio.AbstractEventLoop]) -> None:
    loop = new_loop()
    try:
        acceptor = Acceptor.listen(loop, "127.0.0.1", 0, 4096, False, Echo)
        # Connected and written before the loop runs: the kernel holds them all.
        clients = [socket.create_connection(("127.0.0.1", acceptor.port)) for _ in range(QUEUED)]
        for i, c in enumerate(clients):
            c.sendall(b"%d" % i)

        async def answers() -> list[bytes]:
            async def read(i: int, c: socket.socket) -> bytes:
                c.setblocking(False)
                want = b"echo:%d" % i
                got = b""
                while len(got) < len(want):
                    got += await loop.sock_recv(c, 64)
                return got
            return await asyncio.wait_for(asyncio.gather(*(read(i, c) for i, c in enumerate(clients))), 30)

        assert loop.run_until_complete(answers()) == [b"echo:%d" % i for i in range(QUEUED)]
        acceptor.close()
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", acceptor.port), timeout=5)
        assert len(Echo.served) == QUEUED
        for c in clients:
            c.close()
        loop.run_until_complete(asyncio.wait_for(asyncio.gather(*(e.lost for e in Echo.served)), 30))
    finally:
        Echo.served.clear()
        loop.close()


def test_a_name_binds_its_first_address() -> None:
    loop = asyncio.new_event_loop()
    try:
        acceptor = Acceptor.listen(loop, "localhost", 0, 16, False, Echo)
        assert acceptor.sock.getsockname()[0] in ("127.0.0.1", "::1")
        acceptor.close()
    finally:
        loop.close()
