"""The lean front door (http/lean_door.py) answers the hot routes exactly as
aiohttp does, and hands every other request to aiohttp, over real sockets."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

import msgspec
import pytest

from cascade.config import Settings
from cascade.server import Server

TEMPLATE = (b'{"name":"t","channels":[{"channel":"inapp","stopCondition":"viewed","waitMinutes":30,'
            b'"content":{"title":"hi","body":"b"}},{"channel":"push","content":{"title":"hi","body":"b"}}],'
            b'"config":{"sequenceEnabled":true}}')
SEND = b'{"template":"t1","recipient":{"id":"u1"}}'

# (request head without the Host line, body) -> answered identically by both doors
CASES = [
    (b"POST /v1/sends HTTP/1.1\r\nContent-Type: application/json", SEND),
    (b"POST /v1/sends HTTP/1.1\r\nContent-Type: application/json", b'{"template":"nope","recipient":"u1"}'),
    (b"POST /v1/sends HTTP/1.1\r\nContent-Type: application/json", b"{not json"),
    (b"POST /v1/sends HTTP/1.1\r\nContent-Type: text/plain", b"x"),
    (b"POST /v1/sends HTTP/1.1\r\ncontent-type: application/json; charset=utf-8", b'{"sends":[' + SEND + b",{}]}"),
    (b"POST /v1/events HTTP/1.1\r\nContent-Type: application/json", b'{"messageId":"nope","type":"clicked"}'),
    (b"POST /v1/events HTTP/1.1\r\nContent-Type: application/x-ndjson", b'{"messageId":"a.1","type":"clicked"}\nx\n'),
    (b"POST /v1/events HTTP/1.0\r\nContent-Type: application/json", b'{"events":[]}'),
    (b"POST /v1/events HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Type: application/json", None),
    (b"GET /v1/sends?limit=5 HTTP/1.1", b""),
    (b"POST /v1/nothing HTTP/1.1\r\nContent-Type: application/json", b"{}"),
]


def _settings(tmp_path: Path, lean: bool) -> Settings:
    return msgspec.convert({"server": {"port": 0, "lean_door": lean}, "storage": {"data_dir": str(tmp_path)},
                            "clock": {"mode": "manual"}}, Settings)


async def _exchange(port: int, raw: bytes, answers: int = 1) -> list[tuple[int, bytes]]:
    """Write raw bytes on one connection; read `answers` responses (status, body)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(raw)
    out = []
    for _ in range(answers):
        head = await reader.readuntil(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        length = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))  # type: ignore[union-attr]
        out.append((status, await reader.readexactly(length)))
    writer.close()
    return out


def _request(head: bytes, body: bytes | None) -> bytes:
    head = head.replace(b"\r\n", b"\r\nHost: x\r\n", 1) if b"\r\n" in head else head + b"\r\nHost: x"
    if body is None:  # chunked: one chunk and the end
        return head + b"\r\n\r\n23\r\n" + b'{"messageId":"nope","type":"viewed"}'[:35] + b"\r\n0\r\n\r\n"
    return head + b"\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)


def _normal(body: bytes) -> Any:
    text = re.sub(rb'"(id|sendId|messageId)":"[^"]*"', b'"\\1":"*"', body)
    return re.sub(rb'"\d{4}-\d\d-\d\dT[^"]*"', b'"<time>"', text)


async def _answers(tmp_path: Path, lean: bool) -> list[Any]:
    async with Server(_settings(tmp_path, lean)) as server:
        assert server.port is not None
        [(status, _)] = await _exchange(server.port, _request(b"PUT /v1/templates/t1 HTTP/1.1\r\n"
                                                              b"Content-Type: application/json", TEMPLATE))
        assert status in (200, 201), _
        return [await _exchange(server.port, _request(head, body)) for head, body in CASES]


async def test_the_hot_routes_answer_as_aiohttp_does_and_the_rest_is_aiohttps(tmp_path: Path) -> None:
    lean = await _answers(tmp_path / "lean", True)
    plain = await _answers(tmp_path / "plain", False)
    for case, a, b in zip(CASES, lean, plain):
        assert [(s, _normal(x)) for s, x in a] == [(s, _normal(x)) for s, x in b], case[0]
    assert lean[0][0][0] == 202 and lean[-1][0][0] == 404


async def test_pipelined_requests_are_answered_in_order_then_a_cold_one_is_handed_off(tmp_path: Path) -> None:
    async with Server(_settings(tmp_path, True)) as server:
        assert server.port is not None
        await _exchange(server.port, _request(b"PUT /v1/templates/t1 HTTP/1.1\r\nContent-Type: application/json",
                                              TEMPLATE))
        sends = [SEND.replace(b"u1", b"u%d" % i) for i in range(5)]
        raw = b"".join(_request(b"POST /v1/sends HTTP/1.1\r\nContent-Type: application/json", s) for s in sends)
        raw += _request(b"GET /healthz HTTP/1.1", b"")
        answers = await _exchange(server.port, raw, answers=6)
        assert [s for s, _ in answers] == [202] * 5 + [200]
        recipients = [msgspec.json.decode(body)["recipient"] for _, body in answers[:5]]
        assert recipients == [f"u{i}" for i in range(5)]


async def test_a_long_pipeline_mixing_at_once_and_later_answers_keeps_its_order(tmp_path: Path) -> None:
    # Invalid requests are answered within the read that framed them, a send once its shard has taken
    # it: 600 on one connection (the first 400 all answered at once), in order, however each was answered.
    async with Server(_settings(tmp_path, True)) as server:
        assert server.port is not None
        await _exchange(server.port, _request(b"PUT /v1/templates/t1 HTTP/1.1\r\nContent-Type: application/json",
                                              TEMPLATE))
        head = b"POST /v1/sends HTTP/1.1\r\nContent-Type: application/json"
        sent = [i for i in range(400, 600) if i % 3 == 0]
        bodies = [SEND.replace(b"u1", b"u%d" % i) if i in sent else b"{not json" for i in range(600)]
        raw = b"".join(_request(head, body) for body in bodies)
        answers = await _exchange(server.port, raw, answers=600)
        assert [s for s, _ in answers] == [202 if i in sent else 400 for i in range(600)]
        recipients = [msgspec.json.decode(body)["recipient"] for s, body in answers if s == 202]
        assert recipients == [f"u{i}" for i in sent]


@pytest.mark.parametrize("head", [
    b"POST /v1/sends HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6",  # two lengths: aiohttp refuses
    b"POST /v1/sends HTTP/1.1\r\nContent-Length: +5",
    b"POST /v1/sends HTTP/1.1\r\n Folded: yes\r\nContent-Length: 5",
])
async def test_doubtful_framing_goes_to_aiohttp_which_refuses_it(tmp_path: Path, head: bytes) -> None:
    async with Server(_settings(tmp_path, True)) as server:
        assert server.port is not None
        [(status, _)] = await _exchange(server.port, head + b"\r\nHost: x\r\n\r\nhello")
        assert status == 400


async def _refused_while_behind(tmp_path: Path, lean: bool) -> tuple[list[tuple[int, bytes, bytes]], str]:
    """Pipelined sends and an event while the engine says it is behind: (status, head, body) each, and
    /metrics after them."""
    async with Server(_settings(tmp_path, lean)) as server:
        assert server.port is not None and server.engine is not None
        await _exchange(server.port, _request(b"PUT /v1/templates/t1 HTTP/1.1\r\nContent-Type: application/json",
                                              TEMPLATE))
        server.engine.behind = lambda: "the server is 80 ms behind; retry shortly"  # type: ignore[method-assign]
        send = b"POST /v1/sends HTTP/1.1\r\nContent-Type: application/json\r\nX-Request-Id: req-%d"
        raw = b"".join(_request(send % i, SEND) for i in range(3))
        raw += _request(b"POST /v1/events HTTP/1.1\r\nContent-Type: application/json",
                        b'{"messageId":"snd_000000000000001.1","type":"clicked"}')
        raw += _request(send % 3, SEND)
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(raw)
        out = []
        for _ in range(5):
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))  # type: ignore[union-attr]
            out.append((int(head.split(b" ", 2)[1]), head, await reader.readexactly(length)))
        writer.close()
        [(_, metrics)] = await _exchange(server.port, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        return out, metrics.decode()


@pytest.mark.parametrize("lean", [True, False])
async def test_each_refusal_says_why_as_of_when_its_request_was_read(tmp_path: Path, lean: bool) -> None:
    async with Server(_settings(tmp_path, lean)) as server:
        assert server.port is not None and server.engine is not None
        engine = server.engine
        send = _request(b"POST /v1/sends HTTP/1.1\r\nContent-Type: application/json", SEND)
        await _exchange(server.port, _request(b"PUT /v1/templates/t1 HTTP/1.1\r\nContent-Type: application/json",
                                              TEMPLATE))
        answers = []
        for why in ("the server is 80 ms behind; retry shortly", "deliveries wait 70 ms; retry shortly", None):
            engine.behind = lambda why=why: why  # type: ignore[method-assign]
            answers += await _exchange(server.port, send)
        assert [status for status, _ in answers] == [503, 503, 202]
        assert [msgspec.json.decode(body)["error"]["message"] for _, body in answers[:2]] == [
            "the server is 80 ms behind; retry shortly", "deliveries wait 70 ms; retry shortly"]


async def test_a_send_refused_while_behind_is_answered_at_once_in_order_and_counted(tmp_path: Path) -> None:
    lean, lean_metrics = await _refused_while_behind(tmp_path / "lean", True)
    plain, plain_metrics = await _refused_while_behind(tmp_path / "plain", False)
    assert [s for s, _, _ in lean] == [s for s, _, _ in plain] == [503, 503, 503, 200, 503]
    assert [b for _, _, b in lean] == [b for _, _, b in plain]
    for i, (status, head, body) in zip((0, 1, 2, None, 3), lean):
        if i is not None:
            assert b"\r\nRetry-After: 1\r\n" in head and b"\r\nX-Request-Id: req-%d\r\n" % i in head, head
            assert msgspec.json.decode(body)["error"]["code"] == "overloaded"
    for text in (lean_metrics, plain_metrics):
        assert re.search(r'cascade_http_request_duration_seconds_count\{method="POST",route="/v1/sends",'
                         r'status="503"\} 4\.0', text), text
        assert re.search(r'cascade_sends_shed_total\{reason="lag"\} 4\.0', text)
