"""The webhook provider against a scripted local endpoint (API.md § Delivery),
and a raw one (test_http11_client.RawServer) for what aiohttp would not do."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import random
import re
import socket
import ssl
import textwrap
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from test_http11_client import CLOSE, OK, raw_server, tls_files  # noqa: F401 (fixtures)

from cascade.delivery.providers.base import OutgoingMessage
from cascade.delivery.providers.webhook import WebhookProvider

DOCS = Path(__file__).resolve().parent.parent / "docs" / "operations.md"

MESSAGE = OutgoingMessage(
    message_id="msg-1",
    send_id="send-1",
    template="welcome",
    template_version=2,
    step=1,
    channel="push",
    recipient={"id": "u-1", "name": "Zoë"},
    content={"title": "Hi Zoë", "body": "Welcome"},
)


class Endpoint:
    """Answers with `script` in order (a status, (status, headers), "hang" or
    "chunked"), then 200; records every request it sees."""

    def __init__(self) -> None:
        self.script: list[Any] = []
        self.requests: list[tuple[dict[str, str], bytes, Any]] = []
        self.release = asyncio.Event()  # "hang" waits on it; set at teardown

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.requests.append((dict(request.headers), body, request.transport.get_extra_info("peername")))
        step = self.script.pop(0) if self.script else 200
        if step == "hang":
            await self.release.wait()
            return web.Response(status=200)
        if step == "chunked":
            resp = web.StreamResponse(status=200)
            resp.enable_chunked_encoding()
            await resp.prepare(request)
            for part in (b"a" * 10, b"b" * 70_000, b"c"):
                await resp.write(part)
            await resp.write_eof()
            return resp
        status, headers = step if isinstance(step, tuple) else (step, {})
        return web.Response(status=status, headers=headers, text="ok")


class RecordingSleep:
    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)


class TopOfRangeRng(random.Random):
    """Always picks the largest delay jitter allows: exposes the cap."""

    def uniform(self, a: float, b: float) -> float:
        return b


@pytest.fixture
async def endpoint(aiohttp_server: Any) -> AsyncIterator[tuple[Endpoint, str]]:
    ep = Endpoint()
    app = web.Application()
    app.router.add_post("/push", ep.handle)
    server = await aiohttp_server(app)
    yield ep, str(server.make_url("/push"))
    ep.release.set()


@pytest.fixture
async def make_provider() -> AsyncIterator[Callable[..., WebhookProvider]]:
    made: list[WebhookProvider] = []

    def make(url: str, **kwargs: Any) -> WebhookProvider:
        kwargs.setdefault("sleep", RecordingSleep())
        provider = WebhookProvider("webhook", url, **kwargs)
        made.append(provider)
        return provider

    yield make
    for provider in made:
        await provider.close()


async def test_posts_the_compact_json_payload_with_its_idempotency_key(endpoint, make_provider) -> None:
    ep, url = endpoint
    outcome = await make_provider(url).deliver(MESSAGE)
    assert outcome.ok and outcome.attempts == 1
    headers, body, _ = ep.requests[0]
    assert json.loads(body) == MESSAGE.payload()
    assert body == json.dumps(MESSAGE.payload(), separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    assert headers["Content-Type"] == "application/json"
    assert headers["Idempotency-Key"] == "msg-1"
    assert "X-Cascade-Signature" not in headers


def documented_signature_check() -> Callable[..., bool]:
    """The verification snippet of docs/operations.md § Webhooks, run as is."""
    text = DOCS.read_text(encoding="utf-8")
    blocks = [b for b in re.findall(r"```python\n(.*?)\n *```", text, re.S) if "def signature_ok" in b]
    assert len(blocks) == 1, "docs/operations.md has one signature_ok snippet"
    namespace: dict[str, Any] = {}
    exec(compile(textwrap.dedent(blocks[0]), str(DOCS), "exec"), namespace)  # the documentation's own code
    assert namespace["TOLERANCE_S"] == 300
    return namespace["signature_ok"]  # type: ignore[no-any-return]


async def test_signature_is_the_hmac_sha256_of_the_time_and_the_exact_body_when_a_secret_is_set(
        endpoint, make_provider) -> None:
    ep, url = endpoint
    assert (await make_provider(url, secret="whsec", clock=lambda: 1_796_000_000.7).deliver(MESSAGE)).ok
    headers, body, _ = ep.requests[0]
    expected = hmac.new(b"whsec", b"1796000000." + body, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(headers["X-Cascade-Signature"], f"t=1796000000,sha256={expected}")


async def test_the_documented_check_accepts_a_fresh_signature_and_refuses_stale_or_forged_ones(
        endpoint, make_provider) -> None:
    ep, url = endpoint
    signature_ok = documented_signature_check()
    assert (await make_provider(url, secret="whsec").deliver(MESSAGE)).ok  # the real clock
    headers, body, _ = ep.requests[0]
    header = headers["X-Cascade-Signature"]
    t = int(re.fullmatch(r"t=(\d+),sha256=[0-9a-f]{64}", header).group(1))  # type: ignore[union-attr]
    assert signature_ok(b"whsec", body, header)  # now
    assert signature_ok(b"whsec", body, header, now=t + 299) and signature_ok(b"whsec", body, header, now=t - 299)
    assert not signature_ok(b"whsec", body, header, now=t + 301)  # a replay, 5 minutes on
    assert not signature_ok(b"whsec", body, header, now=t - 301)
    assert not signature_ok(b"other", body, header, now=t)
    assert not signature_ok(b"whsec", body + b" ", header, now=t)
    forged_time = header.replace(f"t={t}", f"t={t + 100}")  # a fresh time on an old signature
    assert not signature_ok(b"whsec", body, forged_time, now=t + 100)
    assert not signature_ok(b"whsec", body, header.split(",")[1], now=t)  # no time at all
    assert not signature_ok(b"whsec", body, "", now=t)


async def test_every_attempt_is_signed_afresh_with_its_own_time(endpoint, make_provider) -> None:
    ep, url = endpoint
    ep.script = [503]
    times = iter([1_796_000_000.0, 1_796_000_004.0])
    assert (await make_provider(url, secret="whsec", clock=lambda: next(times)).deliver(MESSAGE)).ok
    signature_ok = documented_signature_check()
    (h1, b1, _), (h2, b2, _) = ep.requests
    assert b1 == b2 and h1["Idempotency-Key"] == h2["Idempotency-Key"] == "msg-1"
    assert h1["X-Cascade-Signature"].startswith("t=1796000000,") and h2["X-Cascade-Signature"].startswith("t=1796000004,")
    assert signature_ok(b"whsec", b1, h1["X-Cascade-Signature"], now=1_796_000_004)
    assert signature_ok(b"whsec", b2, h2["X-Cascade-Signature"], now=1_796_000_004)


@pytest.mark.parametrize("status", [500, 503, 429, 408])
async def test_transient_answers_are_retried_until_the_endpoint_accepts(endpoint, make_provider, status) -> None:
    ep, url = endpoint
    ep.script = [status, status]
    outcome = await make_provider(url, max_attempts=3).deliver(MESSAGE)
    assert outcome.ok and outcome.attempts == 3
    assert {h["Idempotency-Key"] for h, _, _ in ep.requests} == {"msg-1"}


async def test_exhausted_retries_fail_with_the_last_status_after_max_attempts(endpoint, make_provider) -> None:
    ep, url = endpoint
    ep.script = [503, 502, 500, 200]
    outcome = await make_provider(url, max_attempts=3).deliver(MESSAGE)
    assert not outcome.ok
    assert outcome.reason == "retries_exhausted: http_500"
    assert outcome.attempts == 3 and len(ep.requests) == 3


async def test_a_slow_endpoint_times_out_and_is_retried_a_bounded_number_of_times(endpoint, make_provider) -> None:
    ep, url = endpoint
    ep.script = ["hang"] * 5
    loop = asyncio.get_running_loop()
    started = loop.time()
    outcome = await make_provider(url, timeout_s=0.05, max_attempts=3).deliver(MESSAGE)
    assert not outcome.ok and outcome.reason == "retries_exhausted: timeout" and outcome.attempts == 3
    assert len(ep.requests) == 3
    assert loop.time() - started < 2.0


async def test_a_timeout_followed_by_success_is_delivered(endpoint, make_provider) -> None:
    ep, url = endpoint
    ep.script = ["hang"]
    outcome = await make_provider(url, timeout_s=0.05).deliver(MESSAGE)
    assert outcome.ok and outcome.attempts == 2


async def test_a_refused_connection_is_retried_and_reported_never_raised(make_provider) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    outcome = await make_provider(f"http://127.0.0.1:{port}/push", max_attempts=2).deliver(MESSAGE)
    assert not outcome.ok and outcome.attempts == 2
    assert outcome.reason is not None and outcome.reason.startswith("retries_exhausted: ")


@pytest.mark.parametrize("status", [400, 404, 410, 302])
async def test_other_answers_fail_at_once_without_retry_or_redirect(endpoint, make_provider, status) -> None:
    ep, url = endpoint
    ep.script = [(status, {"Location": url})]
    sleep = RecordingSleep()
    outcome = await make_provider(url, sleep=sleep).deliver(MESSAGE)
    assert not outcome.ok and outcome.reason == f"http_{status}" and outcome.attempts == 1
    assert len(ep.requests) == 1 and sleep.delays == []


async def test_backoff_is_full_jitter_within_the_exponential_bound_and_the_cap(endpoint, make_provider) -> None:
    ep, url = endpoint
    ep.script = [503] * 8
    sleep = RecordingSleep()
    provider = make_provider(
        url, max_attempts=8, backoff_base_s=0.1, backoff_max_s=0.5, rng=random.Random(7), sleep=sleep
    )
    assert not (await provider.deliver(MESSAGE)).ok
    assert len(sleep.delays) == 7  # none after the last attempt
    for n, delay in enumerate(sleep.delays, start=1):
        assert 0.0 <= delay <= min(0.5, 0.1 * 2 ** (n - 1))


async def test_backoff_doubles_from_the_base_and_never_exceeds_the_cap(endpoint, make_provider) -> None:
    ep, url = endpoint
    ep.script = [500] * 5
    sleep = RecordingSleep()
    provider = make_provider(
        url, max_attempts=6, backoff_base_s=0.1, backoff_max_s=0.5, rng=TopOfRangeRng(), sleep=sleep
    )
    assert (await provider.deliver(MESSAGE)).ok
    assert sleep.delays == pytest.approx([0.1, 0.2, 0.4, 0.5, 0.5])


async def test_retry_after_seconds_is_honoured_and_capped(endpoint, make_provider) -> None:
    ep, url = endpoint
    ep.script = [
        (429, {"Retry-After": "2"}),
        (503, {"Retry-After": "120"}),
        (503, {"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}),  # a date: own backoff
    ]
    sleep = RecordingSleep()
    provider = make_provider(
        url, max_attempts=4, backoff_base_s=0.1, backoff_max_s=5.0, rng=TopOfRangeRng(), sleep=sleep
    )
    assert (await provider.deliver(MESSAGE)).ok
    assert sleep.delays == pytest.approx([2.0, 5.0, 0.4])


async def test_deliveries_share_one_keep_alive_connection(endpoint, make_provider) -> None:
    ep, url = endpoint
    provider = make_provider(url)
    for _ in range(3):
        assert (await provider.deliver(MESSAGE)).ok
    assert len({peer for _, _, peer in ep.requests}) == 1


async def test_close_is_idempotent_and_a_later_delivery_opens_a_new_session(endpoint, make_provider) -> None:
    _, url = endpoint
    provider = make_provider(url)
    assert (await provider.deliver(MESSAGE)).ok
    await provider.close()
    await provider.close()
    assert (await provider.deliver(MESSAGE)).ok


async def test_concurrent_deliveries_use_at_most_max_in_flight_connections_and_reuse_them(
        endpoint, make_provider) -> None:
    ep, url = endpoint
    provider = make_provider(url, max_in_flight=4)
    for _ in range(3):
        outcomes = await asyncio.gather(*(provider.deliver(MESSAGE) for _ in range(20)))
        assert all(o.ok and o.attempts == 1 for o in outcomes)
    assert len(ep.requests) == 60 and len({peer for _, _, peer in ep.requests}) <= 4


async def test_a_connection_close_answer_is_honoured_and_the_next_delivery_connects_anew(
        endpoint, make_provider) -> None:
    ep, url = endpoint
    ep.script = [(200, {"Connection": "close"}), (200, {"Connection": "close"})]
    provider = make_provider(url)
    for _ in range(3):
        assert (await provider.deliver(MESSAGE)).attempts == 1
    assert len({peer for _, _, peer in ep.requests}) == 3


async def test_a_chunked_answer_is_read_through_and_its_connection_reused(endpoint, make_provider) -> None:
    ep, url = endpoint
    ep.script = ["chunked", "chunked"]
    provider = make_provider(url)
    for _ in range(3):
        assert (await provider.deliver(MESSAGE)).ok
    assert len(ep.requests) == 3 and len({peer for _, _, peer in ep.requests}) == 1


async def test_an_endpoint_closing_idle_connections_between_posts_costs_no_attempt(raw_server, make_provider) -> None:
    server = await raw_server(lambda conn, number, request: (OK, CLOSE))  # answers, then hangs up
    provider = make_provider(server.url())
    for _ in range(3):
        outcome = await provider.deliver(MESSAGE)
        assert outcome.ok and outcome.attempts == 1
    assert server.connections == 3


async def test_a_post_lost_to_the_keep_alive_race_is_sent_again_within_the_attempt(raw_server, make_provider) -> None:
    # The endpoint takes the second post on the kept-alive connection and
    # closes it without a byte of answer, as one timing out idle connections
    # does just as the post arrives.
    server = await raw_server(lambda conn, number, request: CLOSE if number == 2 else OK)
    sleep = RecordingSleep()
    provider = make_provider(server.url(), sleep=sleep)
    assert (await provider.deliver(MESSAGE)).attempts == 1
    outcome = await provider.deliver(MESSAGE)
    assert outcome.ok and outcome.attempts == 1 and sleep.delays == []
    assert [(r.conn, r.number) for r in server.requests] == [(1, 1), (1, 2), (2, 1)]
    assert {re.search(rb"Idempotency-Key: (.*)\r\n", r.head).group(1) for r in server.requests} == {b"msg-1"}  # type: ignore[union-attr]


async def test_an_endpoint_that_drops_every_post_fails_after_max_attempts(raw_server, make_provider) -> None:
    server = await raw_server(lambda conn, number, request: CLOSE)
    outcome = await make_provider(server.url(), max_attempts=3).deliver(MESSAGE)
    assert not outcome.ok and outcome.attempts == 3
    assert outcome.reason is not None and outcome.reason.startswith("retries_exhausted: ConnectionClosed")
    assert len(server.requests) == 3  # fresh connections: never sent twice within an attempt


async def test_https_endpoints_work(raw_server, make_provider, tls_files) -> None:
    cert, key = tls_files
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    server = await raw_server(lambda conn, number, request: OK, ssl_context=server_ctx)
    provider = make_provider(server.url(scheme="https"), ssl_context=ssl.create_default_context(cafile=str(cert)))
    for _ in range(2):
        assert (await provider.deliver(MESSAGE)).ok
    assert server.connections == 1


async def test_each_retried_attempt_is_logged_with_the_message_id_the_attempt_and_the_reason(
        endpoint, make_provider, caplog) -> None:
    ep, url = endpoint
    ep.script = [503, "hang"]
    with caplog.at_level(logging.INFO, logger="cascade.delivery.providers.webhook"):
        outcome = await make_provider(url, timeout_s=0.05, max_attempts=3).deliver(MESSAGE)
    assert outcome.ok and outcome.attempts == 3
    records = [r for r in caplog.records if getattr(r, "event", None) == "delivery_attempt_failed"]
    assert [(r.levelno, r.messageId, r.attempt, r.reason) for r in records] == [  # type: ignore[attr-defined]
        (logging.INFO, "msg-1", 1, "http_503"), (logging.INFO, "msg-1", 2, "timeout")]
    assert "msg-1" in records[0].getMessage() and "attempt 1 of 3" in records[0].getMessage()


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"url": "ftp://example.com/x"}, "url"),
        ({"url": "/relative"}, "url"),
        ({"url": "http://x", "max_attempts": 0}, "max_attempts"),
        ({"url": "http://x", "timeout_s": 0}, "timeout_s"),
        ({"url": "http://x", "max_in_flight": 0}, "max_in_flight"),
    ],
)
def test_bad_configuration_is_refused_with_a_message_naming_the_setting(kwargs, words) -> None:
    with pytest.raises(ValueError, match=words):
        WebhookProvider("webhook", **kwargs)


def test_webhook_cannot_be_called_synchronously() -> None:
    with pytest.raises(TypeError, match="asynchronous"):
        WebhookProvider("webhook", "http://x").deliver_now(MESSAGE)
