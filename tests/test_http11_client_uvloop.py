"""The webhook client on uvloop (the server's loop where uvloop can be
imported: its transports are not asyncio's classes), and the server's choice
of loop with and without uvloop."""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import pytest

from cascade.delivery.providers.base import OutgoingMessage
from cascade.delivery.providers.httpclient import ConnectionClosed, HttpClient, Target
from cascade.delivery.providers.webhook import WebhookProvider
from cascade.server import event_loop_factory

uvloop = pytest.importorskip("uvloop", reason="uvloop is not installed (it is not used on Windows)")

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


async def endpoint(answers: list[bytes | None]) -> tuple[asyncio.Server, list[int]]:
    """Answers each request on a connection with the next of `answers`
    (None: hang up without answering); records which connection each came on."""
    seen: list[int] = []
    connections = 0

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        conn = connections
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
                await reader.readexactly(length)
                seen.append(conn)
                answer = answers.pop(0) if answers else OK
                if answer is None:
                    break
                writer.write(answer)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    return await asyncio.start_server(serve, "127.0.0.1", 0), seen


def run_on_uvloop(main: Any) -> Any:
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main)


def test_the_client_keeps_alive_reuses_and_retries_the_keep_alive_race_on_uvloop() -> None:
    async def main() -> tuple[list[Any], list[int], Exception | None, str]:
        # The third request is dropped unanswered on the kept-alive connection.
        server, seen = await endpoint([OK, OK, None])
        dropping, _ = await endpoint([None])  # drops the first request of a fresh connection
        http = HttpClient(timeout_s=5)
        try:
            target = Target(f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/")
            statuses = [await http.post(target, b"{}") for _ in range(4)]
            try:
                await http.post(Target(f"http://127.0.0.1:{dropping.sockets[0].getsockname()[1]}/"), b"{}")
                error = None
            except Exception as exc:
                error = exc
        finally:
            await http.close()
            server.close()
            dropping.close()
        return statuses, seen, error, type(asyncio.get_running_loop()).__module__

    statuses, seen, error, loop_module = run_on_uvloop(main())
    assert loop_module.startswith("uvloop")
    assert statuses == [(200, None)] * 4
    assert seen == [1, 1, 1, 2, 2]  # the dropped third went again, on a second connection
    assert isinstance(error, ConnectionClosed)  # dropped on a fresh connection: not sent again


def test_the_webhook_provider_delivers_and_times_out_on_uvloop() -> None:
    message = OutgoingMessage("m-1", "s-1", "t", 1, 1, "push", {"id": "u"}, {"title": "hi"})

    async def hang(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1)  # the first byte of the request, then nothing; ends when the client aborts
        await reader.read()
        writer.close()

    async def main() -> tuple[Any, Any]:
        server, _ = await endpoint([])
        slow = await asyncio.start_server(hang, "127.0.0.1", 0)
        ok = WebhookProvider("push", f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/", secret="s")
        timing_out = WebhookProvider("push", f"http://127.0.0.1:{slow.sockets[0].getsockname()[1]}/",
                                     timeout_s=0.05, max_attempts=2, backoff_base_s=0.0)
        try:
            return await ok.deliver(message), await timing_out.deliver(message)
        finally:
            await ok.close()
            await timing_out.close()
            server.close()
            slow.close()

    delivered, timed_out = run_on_uvloop(main())
    assert delivered.ok and delivered.attempts == 1
    assert not timed_out.ok and timed_out.reason == "retries_exhausted: timeout" and timed_out.attempts == 2


def test_the_server_runs_on_uvloop_when_it_can_be_imported() -> None:
    factory, description = event_loop_factory()
    loop = factory()
    try:
        assert type(loop).__module__.startswith("uvloop") and description.startswith("uvloop ")
    finally:
        loop.close()


def test_the_server_falls_back_to_asyncios_loop_without_uvloop(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "uvloop", None)  # `import uvloop` now raises ImportError
    factory, description = event_loop_factory()
    assert factory is asyncio.new_event_loop
    assert description.startswith("asyncio (uvloop not available")
