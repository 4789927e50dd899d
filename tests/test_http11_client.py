"""The webhook's HTTP/1.1 client (cascade/engine/providers/httpclient.py)
against a scripted raw endpoint on asyncio streams: keep-alive reuse, every
way an answer can end, the keep-alive race, bounds and timeouts, and TLS."""

from __future__ import annotations

import asyncio
import shutil
import ssl
import subprocess
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from cascade.delivery.providers.httpclient import ConnectionClosed, HttpClient, ProtocolError, Target

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
CLOSE = "close"  # close the connection without answering
HANG = "hang"  # never answer (until the server stops)


@dataclass
class Request:
    conn: int  # which connection, from 1
    number: int  # which request on it, from 1
    head: bytes
    body: bytes


class RawServer:
    """`answer(conn, number, request)` says what to do with each request: bytes
    to write (a list: written one by one, flushed in between), CLOSE, HANG,
    an asyncio.Event (wait for it, then answer 200), or (bytes, CLOSE):
    answer, then close. Records requests and connections; `until(condition)`
    waits for a condition on them."""

    def __init__(self, answer: Callable[[int, int, Request], Any]) -> None:
        self.answer = answer
        self.requests: list[Request] = []
        self.connections = 0  # accepted
        self.closed = 0  # ended, whoever closed them
        self.hanging = 0
        self._changed = asyncio.Condition()
        self._stop = asyncio.Event()
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[Any]] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self.port = 0

    async def start(self, ssl_context: ssl.SSLContext | None = None) -> RawServer:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=ssl_context)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def url(self, path: str = "/hook", scheme: str = "http") -> str:
        return f"{scheme}://127.0.0.1:{self.port}{path}"

    async def until(self, condition: Callable[[], bool]) -> None:
        async with self._changed:
            await asyncio.wait_for(self._changed.wait_for(condition), 10)

    async def stop(self) -> None:
        self._stop.set()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for writer in self._writers:  # wakes handlers still reading
            writer.close()
        if self._handlers:  # each ends once its connection is closed
            await asyncio.wait_for(asyncio.gather(*self._handlers), 10)

    async def _changed_now(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        self._writers.add(writer)
        self.connections += 1
        conn, number = self.connections, 0
        await self._changed_now()
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                number += 1
                request = Request(conn, number, head, await reader.readexactly(length))
                self.requests.append(request)
                await self._changed_now()
                action = self.answer(conn, number, request)
                close_after = False
                if isinstance(action, tuple):
                    action, close_after = action[0], action[1] == CLOSE
                if action == CLOSE:
                    break
                if action == HANG or isinstance(action, asyncio.Event):
                    self.hanging += 1
                    await self._changed_now()
                    gate = self._stop if action == HANG else action
                    waits = [asyncio.ensure_future(gate.wait()), asyncio.ensure_future(self._stop.wait())]
                    await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
                    for w in waits:
                        w.cancel()
                    if self._stop.is_set():
                        break
                    action = OK
                for part in action if isinstance(action, list) else [action]:
                    writer.write(part)
                    await writer.drain()
                if close_after:
                    break
        except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError):
            pass  # the client closed it
        finally:
            writer.close()
            try:
                await writer.wait_closed()
            except (ConnectionError, ssl.SSLError):
                pass
            self.closed += 1
            await self._changed_now()


@pytest.fixture
async def raw_server() -> AsyncIterator[Callable[..., Any]]:
    made: list[RawServer] = []

    async def make(answer: Callable[[int, int, Request], Any], ssl_context: ssl.SSLContext | None = None) -> RawServer:
        server = await RawServer(answer).start(ssl_context)
        made.append(server)
        return server

    yield make
    for server in made:
        await server.stop()


@pytest.fixture
async def client() -> AsyncIterator[Callable[..., HttpClient]]:
    made: list[HttpClient] = []

    def make(**kwargs: Any) -> HttpClient:
        kwargs.setdefault("timeout_s", 5.0)
        c = HttpClient(**kwargs)
        made.append(c)
        return c

    yield make
    for c in made:
        await c.close()


async def settle(condition: Callable[[], bool], turns: int = 100) -> None:
    """Let the loop run up to `turns` iterations until `condition` holds."""
    for _ in range(turns):
        if condition():
            return
        await asyncio.sleep(0)
    assert condition()


def always(answer: Any) -> Callable[[int, int, Request], Any]:
    return lambda conn, number, request: answer


async def test_posts_reuse_one_keep_alive_connection_and_send_the_request_as_given(raw_server, client) -> None:
    server = await raw_server(always(OK))
    http = client()
    target = Target(server.url("/hook?x=1"), {"Content-Type": "application/json"})
    for i in range(5):
        assert await http.post(target, b'{"n":%d}' % i, b"Idempotency-Key: k-%d\r\n" % i) == (200, None)
    assert server.connections == 1 and [r.number for r in server.requests] == [1, 2, 3, 4, 5]
    head = server.requests[2].head.decode()
    assert head.startswith("POST /hook?x=1 HTTP/1.1\r\n")
    assert f"\r\nHost: 127.0.0.1:{server.port}\r\n" in head
    assert "\r\nContent-Type: application/json\r\n" in head and "\r\nIdempotency-Key: k-2\r\n" in head
    assert "\r\nContent-Length: 7\r\n" in head and server.requests[2].body == b'{"n":2}'
    assert http.connections() == 1


async def test_a_server_that_closes_idle_connections_gets_a_new_one_each_time(raw_server, client) -> None:
    server = await raw_server(always((OK, CLOSE)))  # no Connection: close, it just hangs up
    http = client()
    target = Target(server.url())
    for _ in range(4):
        assert (await http.post(target, b"{}"))[0] == 200
    assert server.connections == 4 and {r.number for r in server.requests} == {1}


async def test_a_reused_connection_dropped_before_any_answer_byte_is_retried_once_on_a_new_one(
        raw_server, client) -> None:
    # The keep-alive race: the server reads the second request and hangs up
    # without a byte of answer, as one closing an idle connection does.
    server = await raw_server(lambda conn, number, request: CLOSE if number == 2 else OK)
    http = client()
    target = Target(server.url())
    assert (await http.post(target, b"first"))[0] == 200
    assert (await http.post(target, b"second"))[0] == 200
    assert [(r.conn, r.number, r.body) for r in server.requests] == [
        (1, 1, b"first"), (1, 2, b"second"), (2, 1, b"second")]


async def test_a_new_connection_dropped_before_the_answer_is_not_retried(raw_server, client) -> None:
    server = await raw_server(always(CLOSE))
    http = client()
    with pytest.raises(ConnectionClosed) as caught:
        await http.post(Target(server.url()), b"{}")
    assert not caught.value.answered and len(server.requests) == 1


async def test_a_connection_dropped_after_part_of_the_answer_is_not_retried(raw_server, client) -> None:
    server = await raw_server(lambda conn, number, request: OK if number == 1 else (b"HTTP/1.1 20", CLOSE))
    http = client()
    target = Target(server.url())
    await http.post(target, b"{}")
    with pytest.raises(ConnectionClosed) as caught:
        await http.post(target, b"{}")
    assert caught.value.answered and len(server.requests) == 2


async def test_connection_close_answers_close_the_connection_and_the_next_post_opens_another(
        raw_server, client) -> None:
    server = await raw_server(always(b"HTTP/1.1 202 Accepted\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"))
    http = client()
    target = Target(server.url())
    assert (await http.post(target, b"{}"))[0] == 202
    await server.until(lambda: server.closed == 1)  # the server kept it open: the client closed it
    assert http.connections() == 0
    assert (await http.post(target, b"{}"))[0] == 202
    assert server.connections == 2


async def test_http_1_0_answers_close_and_a_body_read_to_the_close_still_answers(raw_server, client) -> None:
    server = await raw_server(always((b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nall of it", CLOSE)))
    http = client()
    target = Target(server.url())
    assert await http.post(target, b"{}") == (200, None)
    assert await http.post(target, b"{}") == (200, None)
    assert server.connections == 2


async def test_chunked_and_large_answers_are_skipped_whole_and_the_connection_reused(raw_server, client) -> None:
    big = b"x" * 200_000  # spans several reads of the client's 64 KiB buffer
    chunked = [b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", b"5\r\nhello\r\n",
               b"%x\r\n%s\r\n" % (len(big), big), b"0\r\nX-Trailer: yes\r\n\r\n"]
    sized = [b"HTTP/1.1 201 Created\r\nContent-Length: %d\r\n\r\n" % len(big), big[:1000], big[1000:]]
    server = await raw_server(lambda conn, number, request: chunked if number % 2 else sized)
    http = client()
    target = Target(server.url())
    statuses = [(await http.post(target, b"{}"))[0] for _ in range(4)]
    assert statuses == [200, 201, 200, 201] and server.connections == 1


async def test_informational_answers_are_skipped_and_retry_after_is_read(raw_server, client) -> None:
    server = await raw_server(always(
        b"HTTP/1.1 100 Continue\r\n\r\n"
        b"HTTP/1.1 503 Service Unavailable\r\nretry-after: 7\r\nContent-Length: 0\r\n\r\n"))
    http = client()
    assert await http.post(Target(server.url()), b"{}") == (503, b"7")


async def test_a_malformed_answer_is_a_protocol_error_and_the_connection_is_dropped(raw_server, client) -> None:
    server = await raw_server(lambda conn, number, request: b"NOT HTTP AT ALL\r\n\r\n" if conn == 1 else OK)
    http = client()
    target = Target(server.url())
    with pytest.raises(ProtocolError):
        await http.post(target, b"{}")
    assert (await http.post(target, b"{}"))[0] == 200
    assert server.connections == 2


async def test_the_timeout_bounds_the_whole_request_and_a_timed_out_connection_is_not_reused(
        raw_server, client) -> None:
    # Status line first, then nothing: a connect-only or first-byte timeout would not fire.
    server = await raw_server(lambda conn, number, request: [b"HTTP/1.1 200 OK\r\n"] if conn == 1 else OK)
    http = client(timeout_s=0.1)
    target = Target(server.url())
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(TimeoutError):
        await http.post(target, b"{}")
    assert 0.09 <= loop.time() - started < 2.0
    assert (await http.post(target, b"{}"))[0] == 200
    assert server.connections == 2


async def test_many_concurrent_timeouts_all_fire(raw_server, client) -> None:
    server = await raw_server(always(HANG))
    http = client(timeout_s=0.1, max_connections=20)
    target = Target(server.url())
    results = await asyncio.gather(*(http.post(target, b"{}") for _ in range(20)), return_exceptions=True)
    assert all(isinstance(r, TimeoutError) for r in results)
    await settle(lambda: http.connections() == 0)  # each timed-out connection was dropped


async def test_requests_beyond_max_connections_wait_for_a_free_one(raw_server, client) -> None:
    gate = asyncio.Event()
    server = await raw_server(always(gate))
    http = client(max_connections=2)
    target = Target(server.url())
    posts = [asyncio.ensure_future(http.post(target, b"%d" % i)) for i in range(5)]
    await server.until(lambda: server.hanging == 2)
    for _ in range(10):  # turns in which a leaky bound would open a third
        await asyncio.sleep(0)
    assert server.connections == 2 and len(server.requests) == 2 and http.connections() == 2
    gate.set()
    assert await asyncio.gather(*posts) == [(200, None)] * 5
    assert server.connections == 2 and len(server.requests) == 5


async def test_waiting_for_a_free_connection_counts_against_the_timeout(raw_server, client) -> None:
    server = await raw_server(always(HANG))
    http = client(max_connections=1, timeout_s=0.2)
    target = Target(server.url())
    loop = asyncio.get_running_loop()
    started = loop.time()
    first = asyncio.ensure_future(http.post(target, b"1"))
    await server.until(lambda: server.hanging == 1)
    with pytest.raises(TimeoutError):
        await http.post(target, b"2")
    with pytest.raises(TimeoutError):
        await first
    assert loop.time() - started < 2.0


async def test_idle_connections_past_the_idle_timeout_are_closed(raw_server, client) -> None:
    server = await raw_server(always(OK))
    http = client(idle_timeout_s=0.0)  # checked as each connection goes idle
    target = Target(server.url())
    await asyncio.gather(http.post(target, b"a"), http.post(target, b"b"))  # two connections
    assert (await http.post(target, b"c"))[0] == 200
    await server.until(lambda: server.closed == 1)  # the one idle longest was closed
    assert server.connections == 2 and http.connections() == 1


async def test_close_closes_every_connection_and_a_later_post_starts_afresh(raw_server, client) -> None:
    server = await raw_server(always(OK))
    http = client()
    target = Target(server.url())
    await asyncio.gather(*(http.post(target, b"{}") for _ in range(3)))
    await http.close()
    await server.until(lambda: server.closed == server.connections)
    assert http.connections() == 0
    assert (await http.post(target, b"{}"))[0] == 200


async def test_a_refused_connection_is_an_os_error(client) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(OSError):
        await client().post(Target(f"http://127.0.0.1:{port}/"), b"{}")


@pytest.mark.parametrize(("url", "head"), [
    ("http://example.com/x", b"POST /x HTTP/1.1\r\nHost: example.com\r\n"),
    ("http://example.com:80", b"POST / HTTP/1.1\r\nHost: example.com\r\n"),
    ("https://[::1]:8443/a/b?c=d", b"POST /a/b?c=d HTTP/1.1\r\nHost: [::1]:8443\r\n"),
])
def test_targets_build_the_request_line_and_host(url: str, head: bytes) -> None:
    assert Target(url).head.startswith(head)


@pytest.mark.parametrize("url", ["ftp://x/", "/relative", "http://"])
def test_targets_refuse_what_is_not_an_absolute_http_url(url: str) -> None:
    with pytest.raises(ValueError, match="url"):
        Target(url)


def test_headers_cannot_smuggle_lines() -> None:
    with pytest.raises(ValueError, match="header"):
        Target("http://x/", {"X-A": "1\r\nX-B: 2"})


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    if shutil.which("openssl") is None:
        pytest.skip("no openssl command to make a test certificate")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True)
    return cert, key


async def test_https_works_and_verifies_the_server(raw_server, client, tls_files) -> None:
    cert, key = tls_files
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    server = await raw_server(always(OK), ssl_context=server_ctx)
    trusting = ssl.create_default_context(cafile=str(cert))
    http = client(ssl_context=trusting)
    target = Target(server.url(scheme="https"))
    for _ in range(3):
        assert (await http.post(target, b"{}"))[0] == 200
    assert server.connections == 1
    with pytest.raises(ssl.SSLError):  # the default trust store does not know our certificate
        await client().post(target, b"{}")
