"""The delivery dispatcher: bounded concurrency, every result back once, in
batches, and a drain on stop."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web

from cascade.delivery.dispatcher import DeliveryDispatcher
from cascade.delivery.providers.base import DeliveryOutcome, OutgoingMessage
from cascade.delivery.providers.memory import MemoryProvider
from cascade.delivery.providers.webhook import WebhookProvider


def message(i: int, channel: str = "push") -> OutgoingMessage:
    return OutgoingMessage(f"m-{i}", f"s-{i}", "welcome", 1, 1, channel, {"id": f"u-{i}"}, {"title": "hi"})


class Results:
    """An `on_results` that records calls, as the engine's enqueue would."""

    def __init__(self) -> None:
        self.calls: list[list[tuple[Any, DeliveryOutcome]]] = []
        self.threads: set[str] = set()

    def __call__(self, results: list[tuple[Any, DeliveryOutcome]]) -> None:
        self.calls.append(results)
        self.threads.add(threading.current_thread().name)

    @property
    def by_token(self) -> dict[Any, DeliveryOutcome]:
        return {token: outcome for call in self.calls for token, outcome in call}

    @property
    def tokens(self) -> Counter[Any]:
        return Counter(token for call in self.calls for token, _ in call)


class GatedProvider:
    """Holds every delivery until `gate` opens (created on the loop it runs on)."""

    synchronous = False

    def __init__(self, name: str = "gated", outcome: DeliveryOutcome = DeliveryOutcome(True)) -> None:
        self.name = name
        self.outcome = outcome
        self.gate = asyncio.Event()
        self.started = 0
        self.closed = False
        self._start = asyncio.Condition()

    async def deliver(self, message: OutgoingMessage) -> DeliveryOutcome:
        async with self._start:
            self.started += 1
            self._start.notify_all()
        await self.gate.wait()
        return self.outcome

    async def until_started(self, n: int) -> None:
        async with self._start:
            await self._start.wait_for(lambda: self.started >= n)

    async def close(self) -> None:
        self.closed = True


class ExplodingProvider:
    synchronous = False
    name = "exploding"

    async def deliver(self, message: OutgoingMessage) -> DeliveryOutcome:
        raise RuntimeError("boom")

    async def close(self) -> None:
        return None


class CountingEndpoint:
    """Counts concurrent requests; holds them until `release` once `hold` are in."""

    def __init__(self, hold: int = 0) -> None:
        self.hold = hold
        self.current = self.peak = self.seen = 0
        self.full = asyncio.Event()
        self.release = asyncio.Event()
        if hold == 0:
            self.release.set()

    async def handle(self, request: web.Request) -> web.Response:
        await request.read()
        self.current += 1
        self.seen += 1
        self.peak = max(self.peak, self.current)
        if self.current >= self.hold:
            self.full.set()
        try:
            await self.release.wait()
        finally:
            self.current -= 1
        return web.Response(status=202)


@pytest.fixture
async def serve(aiohttp_server: Any) -> Callable[[CountingEndpoint], Awaitable[str]]:
    async def start(endpoint: CountingEndpoint) -> str:
        app = web.Application()
        app.router.add_post("/push", endpoint.handle)
        server = await aiohttp_server(app)
        return str(server.make_url("/push"))

    return start


@pytest.fixture
async def dispatchers() -> AsyncIterator[Callable[..., DeliveryDispatcher]]:
    """Dispatchers on the test's loop, closed (drained) after the test."""
    made: list[DeliveryDispatcher] = []

    def make(providers: dict[str, Any], max_in_flight: dict[str, int] | int = 256) -> DeliveryDispatcher:
        d = DeliveryDispatcher(providers, max_in_flight, loop=asyncio.get_running_loop())
        d.start()
        made.append(d)
        return d

    yield make
    for d in made:
        await d.aclose(timeout=5)


async def test_concurrency_per_provider_never_exceeds_max_in_flight(serve, dispatchers) -> None:
    endpoint = CountingEndpoint(hold=8)
    d = dispatchers({"push": WebhookProvider("push", await serve(endpoint))}, max_in_flight=8)
    results = Results()
    d.submit([("push", message(i), i) for i in range(100)], results)
    await endpoint.full.wait()
    stats = d.stats()
    assert stats["in_flight"] == {"push": 8} and stats["queued"] == {"push": 92}
    endpoint.release.set()
    await d.wait_idle()
    assert endpoint.peak == 8 and endpoint.seen == 100
    assert all(outcome.ok for outcome in results.by_token.values())


async def test_each_provider_has_its_own_limit_and_jobs_beyond_it_wait_in_order(dispatchers) -> None:
    slow, other = GatedProvider("slow"), GatedProvider("other")
    d = dispatchers({"slow": slow, "other": other}, max_in_flight={"slow": 2, "other": 3})
    results = Results()
    d.submit([("slow", message(i), ("slow", i)) for i in range(10)], results)
    d.submit([("other", message(i), ("other", i)) for i in range(10)], results)
    await slow.until_started(2)
    await other.until_started(3)
    await asyncio.sleep(0)  # one more turn in which a leaky limit would start more
    assert (slow.started, other.started) == (2, 3)
    assert d.stats()["queued"] == {"slow": 8, "other": 7}
    slow.gate.set()
    other.gate.set()
    await d.wait_idle()
    slow_order = [token[1] for call in results.calls for token, _ in call if token[0] == "slow"]
    assert slow_order == list(range(10))


async def test_every_job_comes_back_exactly_once_whatever_its_outcome(serve, dispatchers) -> None:
    refusing = MemoryProvider("refusing")
    refusing.fail()
    d = dispatchers(
        {
            "push": WebhookProvider("push", await serve(CountingEndpoint())),
            "memory": MemoryProvider("memory"),
            "refusing": refusing,
            "exploding": ExplodingProvider(),
        },
        max_in_flight=16,
    )
    names = ["push", "memory", "refusing", "exploding", "nowhere"]
    results = Results()
    jobs = [(names[i % 5], message(i), i) for i in range(300)]
    for start in range(0, 300, 50):  # several batches, as several shards would send
        d.submit(jobs[start : start + 50], results)
    await d.wait_idle()
    assert results.tokens == Counter(range(300))
    outcomes = results.by_token
    assert [outcomes[i].ok for i in range(5)] == [True, True, False, False, False]
    assert outcomes[4].reason == "unknown_provider: nowhere"
    assert d.pending() == 0


async def test_a_burst_of_results_is_handed_back_in_a_few_batched_calls(serve, dispatchers) -> None:
    d = dispatchers({"push": WebhookProvider("push", await serve(CountingEndpoint()))}, max_in_flight=64)
    results = Results()
    d.submit([("push", message(i), i) for i in range(500)], results)
    await d.wait_idle()
    assert results.tokens == Counter(range(500))
    assert len(results.calls) <= 50, f"{len(results.calls)} on_results calls for 500 jobs"


async def test_a_provider_that_raises_yields_a_failed_outcome_and_is_logged(dispatchers, caplog) -> None:
    d = dispatchers({"exploding": ExplodingProvider()})
    results = Results()
    with caplog.at_level(logging.ERROR, logger="cascade.delivery.dispatcher"):
        d.submit([("exploding", message(1), "t")], results)
        await d.wait_idle()
    outcome = results.by_token["t"]
    assert not outcome.ok and outcome.reason is not None
    assert outcome.reason.startswith("provider_error:") and "boom" in outcome.reason
    assert any("exploding" in r.getMessage() for r in caplog.records)


async def test_stats_count_final_outcomes_and_retries_per_channel_and_provider(dispatchers) -> None:
    retried = GatedProvider("flaky", DeliveryOutcome(True, attempts=3))
    exhausted = GatedProvider("down", DeliveryOutcome(False, "retries_exhausted: http_503", attempts=3))
    retried.gate.set()
    exhausted.gate.set()
    d = dispatchers({"flaky": retried, "down": exhausted})
    jobs = [("flaky", message(1, "push"), 1), ("flaky", message(2, "sms"), 2), ("down", message(3), 3)]
    d.submit(jobs, Results())
    await d.wait_idle()
    assert d.stats()["attempts"] == {
        ("push", "flaky", "ok"): 1,
        ("push", "flaky", "retried"): 2,
        ("sms", "flaky", "ok"): 1,
        ("sms", "flaky", "retried"): 2,
        ("push", "down", "failed"): 1,
        ("push", "down", "retried"): 2,
    }


async def test_closing_drains_in_flight_and_queued_jobs_then_closes_providers() -> None:
    provider = GatedProvider()
    d = DeliveryDispatcher({"gated": provider}, max_in_flight=5, loop=asyncio.get_running_loop())
    d.start()
    results = Results()
    d.submit([("gated", message(i), i) for i in range(50)], results)
    closing = asyncio.ensure_future(d.aclose())
    await provider.until_started(5)
    await asyncio.sleep(0)  # one more turn in which closing could wrongly finish
    assert not closing.done() and provider.started == 5 and not provider.closed
    with pytest.raises(RuntimeError, match="not running"):
        d.submit([("gated", message(99), 99)], results)
    provider.gate.set()
    await closing
    assert results.tokens == Counter(range(50)) and provider.closed and d.pending() == 0


async def test_a_drain_that_times_out_abandons_the_rest_without_results() -> None:
    provider = GatedProvider()
    d = DeliveryDispatcher({"gated": provider}, max_in_flight=2, loop=asyncio.get_running_loop())
    d.start()
    results = Results()
    d.submit([("gated", message(i), i) for i in range(10)], results)
    await d.aclose(timeout=0.05)
    assert results.calls == [] and d.pending() == 0 and provider.closed


def test_own_loop_thread_serves_shard_threads_and_stop_drains_it() -> None:
    memory = MemoryProvider("memory")
    d = DeliveryDispatcher({"memory": memory})
    d.start()
    assert any(t.name == "cascade-delivery" and t.daemon for t in threading.enumerate())
    results = Results()
    batches = [[("memory", message(s * 100 + i), (s, i)) for i in range(100)] for s in range(4)]
    shards = [threading.Thread(target=d.submit, args=(batch, results)) for batch in batches]
    for shard in shards:
        shard.start()
    for shard in shards:
        shard.join()
    assert d.wait_idle_threadsafe(timeout=5)
    d.stop(timeout=5)
    assert len(results.tokens) == 400 and set(results.tokens.values()) == {1}
    assert results.threads == {"cascade-delivery"} and memory.accepted == 400
    assert not any(t.name == "cascade-delivery" for t in threading.enumerate())


async def test_every_failed_delivery_is_logged_as_a_warning_with_its_message_id_attempts_and_reason(
        dispatchers, caplog) -> None:
    down = GatedProvider("down", DeliveryOutcome(False, "retries_exhausted: http_503", attempts=3))
    up = GatedProvider("up")
    down.gate.set()
    up.gate.set()
    d = dispatchers({"down": down, "up": up})
    with caplog.at_level(logging.INFO, logger="cascade.delivery.dispatcher"):
        d.submit([("down", message(1), 1), ("up", message(2), 2), ("nowhere", message(3), 3)], Results())
        await d.wait_idle()
    failed = [r for r in caplog.records if getattr(r, "event", None) == "delivery_failed"]
    assert sorted((r.levelno, r.messageId, r.attempt, r.reason) for r in failed) == [  # type: ignore[attr-defined]
        (logging.WARNING, "m-1", 3, "retries_exhausted: http_503"),
        (logging.WARNING, "m-3", 0, "unknown_provider: nowhere"),
    ]
    text = next(r.getMessage() for r in failed if r.messageId == "m-1")  # type: ignore[attr-defined]
    assert "m-1" in text and "3 attempts" in text and "http_503" in text


async def test_a_webhook_answer_that_is_not_retried_is_logged_once_as_the_final_failure(
        aiohttp_server, dispatchers, caplog) -> None:
    async def refuse(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(status=400)

    app = web.Application()
    app.router.add_post("/push", refuse)
    server = await aiohttp_server(app)
    d = dispatchers({"push": WebhookProvider("push", str(server.make_url("/push")))})
    results = Results()
    with caplog.at_level(logging.INFO):
        d.submit([("push", message(7), 7)], results)
        await d.wait_idle()
    assert results.by_token[7] == DeliveryOutcome(False, "http_400", attempts=1)
    logged = [(r.levelno, r.event, r.messageId, r.attempt, r.reason)  # type: ignore[attr-defined]
              for r in caplog.records if getattr(r, "messageId", None) == "m-7"]
    assert logged == [(logging.WARNING, "delivery_failed", "m-7", 1, "http_400")]
