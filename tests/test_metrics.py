"""Prometheus `/metrics`: every figure API.md § Operations names, read from
the engine's plain counters at scrape time, with exact values after a known
sequence of sends, signals and clock advances; and the request-duration
middleware, through aiohttp's test client."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from cascade.delivery.dispatcher import DeliveryDispatcher
from cascade.domain.errors import Overloaded
from cascade.engine import DeliveryOutcome, Engine, EngineConfig, ManualClock, MemoryProvider, OutgoingMessage
from cascade.engine.mailbox import Admission
from cascade.http.metrics import HttpMetrics

T0 = 1_800_000_000.0

WELCOME = {
    "name": "Welcome",
    "channels": [
        {"channel": "inapp", "stopCondition": "viewed", "waitMinutes": 5, "content": {"title": "Hi"}},
        {"channel": "push", "stopCondition": "clicked", "waitMinutes": 30, "content": {"title": "Hi {{recipient.id}}"}},
        {"channel": "email", "content": {"subject": "Hi", "body": "Hello"}},
    ],
    "config": {"sequenceEnabled": True},
}
ALERT = {"name": "Alert", "channels": [{"channel": "sms", "content": {"body": "Alert"}}]}

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


class SmsGatewayProvider:
    """Asynchronous, answers on the dispatcher's loop after one retry."""

    name = "sms-gateway"
    synchronous = False

    def deliver_now(self, message: OutgoingMessage) -> DeliveryOutcome:
        raise TypeError("asynchronous")

    async def deliver(self, message: OutgoingMessage) -> DeliveryOutcome:
        return DeliveryOutcome(True, attempts=2)

    async def close(self) -> None:
        return None


def parse(text: str) -> Samples:
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


@pytest.fixture
def played() -> Iterator[tuple[Engine, DeliveryDispatcher, dict[str, str]]]:
    """An engine that went through a known sequence; names -> send ids."""
    dispatcher = DeliveryDispatcher({"sms": SmsGatewayProvider()})
    dispatcher.start()
    providers = {"push": MemoryProvider("memory"), "email": MemoryProvider("memory"), "sms": SmsGatewayProvider()}
    engine = Engine(ManualClock(T0), providers, EngineConfig(shards=2, gc_freeze_interval_s=0),
                    submit_jobs=dispatcher.submit).start()
    try:
        engine.put_template("welcome", WELCOME).wait()
        engine.put_template("alert", ALERT).wait()
        everything = {"pushTokens": ["tok"], "email": "u@example.com"}
        engine.put_recipient("u1", everything).wait()
        engine.put_recipient("u2", everything).wait()
        engine.put_recipient("u3", {"email": "u3@example.com"}).wait()  # no push token: push is skipped
        engine.put_recipient("u4", {**everything, "phone": "+15550100"}).wait()
        ids = {name: engine.send("welcome", rid)[0].wait()["id"]
               for name, rid in (("A", "u1"), ("B", "u2"), ("C", "u3"), ("D", "u4"), ("E", "u4"))}
        ids["alert-u4"] = engine.send("alert", "u4")[0].wait()["id"]  # async sms: completed
        ids["alert-u1"] = engine.send("alert", "u1")[0].wait()["id"]  # no phone: skipped, so failed
        answer = engine.signals([(f"{ids['A']}.1", None, None, "viewed", None)]).wait()  # A stops on step 1
        assert answer == {"accepted": 1, "duplicates": 0, "errors": []}
        engine.cancel_send(ids["E"]).wait()
        engine.advance(300)  # B, C, D escalate to push; C has no token, so email fires and C completes
        answer = engine.signals([
            (f"{ids['B']}.2", None, None, "clicked", None),  # B stops on step 2
            (f"{ids['A']}.1", None, None, "viewed", None),  # duplicate
            (f"{ids['B']}.2", None, None, "viewed", None),  # push emits no viewed
            (f"{ids['A']}.3", None, None, "clicked", None),  # never sent
        ]).wait()
        assert answer["accepted"] == 1 and answer["duplicates"] == 1
        assert [e["code"] for e in answer["errors"]] == ["unsupported_signal", "unknown_message"]
        engine.inbox("u1").wait()  # listing marks A.1 delivered (counted on a stopped send too)
        engine.advance(1800)  # D escalates to email and completes
        assert dispatcher.wait_idle_threadsafe(10)
        yield engine, dispatcher, ids
    finally:
        engine.stop()
        dispatcher.stop(5)


def scrape(engine: Engine, dispatcher: DeliveryDispatcher | None = None, **kw: Any) -> Samples:
    registry = CollectorRegistry()
    HttpMetrics(engine, registry, dispatcher, **kw)
    return parse(generate_latest(registry).decode())


def test_sends_started_and_finished_by_template_and_outcome(played: Any) -> None:
    engine, dispatcher, _ = played
    m = scrape(engine, dispatcher)
    assert value(m, "cascade_sends_started_total", template="welcome") == 5
    assert value(m, "cascade_sends_started_total", template="alert") == 2
    want = {"welcome": {"stopped": 2, "completed": 2, "cancelled": 1, "failed": 0},
            "alert": {"stopped": 0, "completed": 1, "cancelled": 0, "failed": 1}}
    for template, outcomes in want.items():
        for outcome, n in outcomes.items():
            assert value(m, "cascade_sends_finished_total", template=template, outcome=outcome) == n, (template, outcome)
    assert value(m, "cascade_active_sends") == 0
    assert value(m, "cascade_timers_pending") == 0
    assert value(m, "cascade_metrics_engine_up") == 1


def test_step_signals_count_requested_engagement_skips_stops_and_escalations(played: Any) -> None:
    engine, dispatcher, _ = played
    m = scrape(engine, dispatcher)
    want = {
        ("welcome", "1", "inapp"): dict(requested=5, delivered=1, viewed=1, clicked=0, failed=0, skipped=0,
                                        stopped=1, escalated=3),
        ("welcome", "2", "push"): dict(requested=2, delivered=0, clicked=1, failed=0, skipped=1, stopped=1,
                                       escalated=1),
        ("welcome", "3", "email"): dict(requested=2, delivered=0, viewed=0, clicked=0, failed=0, skipped=0,
                                        stopped=0, escalated=0),
        ("alert", "1", "sms"): dict(requested=1, delivered=0, clicked=0, failed=0, skipped=1, stopped=0,
                                    escalated=0),
    }
    got = {k[1]: v for k, v in m.items() if k[0] == "cascade_step_signals_total"}
    assert len(got) == sum(len(signals) for signals in want.values())  # no viewed series for push or sms
    for (template, step, channel), signals in want.items():
        for signal, n in signals.items():
            labels = dict(template=template, step=step, channel=channel, signal=signal)
            assert value(m, "cascade_step_signals_total", **labels) == n, labels


def test_timer_lateness_histogram_counts_every_window_that_ended(played: Any) -> None:
    engine, dispatcher, _ = played
    m = scrape(engine, dispatcher)
    # B, C, D at +5 min, D again at +35 min; the manual clock fires each on its deadline.
    assert value(m, "cascade_timer_lateness_seconds_count") == 4
    assert value(m, "cascade_timer_lateness_seconds_sum") == 0
    assert value(m, "cascade_timer_lateness_seconds_bucket", le="0.005") == 4
    assert value(m, "cascade_timer_lateness_seconds_bucket", le="+Inf") == 4


def test_events_ingested_by_result(played: Any) -> None:
    engine, dispatcher, _ = played
    m = scrape(engine, dispatcher)
    got = {dict(k[1])["result"]: v for k, v in m.items() if k[0] == "cascade_events_ingested_total"}
    # accepted: viewed A.1, clicked B.2 and the inbox listing's delivered A.1
    assert got == {"accepted": 3, "duplicate": 1, "unknown_message": 1, "unsupported_signal": 1}


def test_delivery_attempts_from_shards_and_from_the_dispatcher(played: Any) -> None:
    engine, dispatcher, _ = played
    m = scrape(engine, dispatcher)
    got = {tuple(dict(k[1])[x] for x in ("channel", "provider", "outcome")): v
           for k, v in m.items() if k[0] == "cascade_delivery_attempts_total"}
    assert got == {("push", "memory", "ok"): 2, ("email", "memory", "ok"): 2,
                   ("sms", "smsgateway", "ok"): 1, ("sms", "smsgateway", "retried"): 1}
    assert value(m, "cascade_delivery_in_flight", channel="sms") == 0
    assert value(m, "cascade_delivery_queued", channel="sms") == 0


def test_mailbox_depth_and_snapshot_gauges(played: Any) -> None:
    engine, dispatcher, _ = played
    m = scrape(engine, dispatcher)
    assert 0 <= value(m, "cascade_shard_mailbox_depth") <= 4  # the scrape's own asks may not be counted off yet
    for name in ("cascade_snapshot_duration_seconds", "cascade_snapshot_bytes",
                 "cascade_last_snapshot_timestamp_seconds"):
        assert value(m, name) == 0
    m = scrape(engine, dispatcher, snapshot_stats=lambda: {
        "duration_seconds": 1.25, "bytes": 4096, "last_timestamp_seconds": T0})
    assert value(m, "cascade_snapshot_duration_seconds") == 1.25
    assert value(m, "cascade_snapshot_bytes") == 4096
    assert value(m, "cascade_last_snapshot_timestamp_seconds") == T0


class _BusyEngine:
    providers: dict[str, Any] = {}
    loop_lag = 0.0
    admission = Admission([], 100_000, lambda: None)

    def watermark_lag(self) -> float:
        return 0.0

    def totals(self) -> Any:
        raise Overloaded("shard 0 has 100000 commands queued; retry shortly")

    def stats(self) -> Any:
        raise AssertionError("not reached")

    def pending(self) -> int:
        return 100_000


def test_an_engine_that_cannot_answer_still_gets_a_scrape_with_engine_up_zero() -> None:
    m = scrape(_BusyEngine())  # type: ignore[arg-type]
    assert value(m, "cascade_metrics_engine_up") == 0
    assert value(m, "cascade_shard_mailbox_depth") == 100_000
    assert value(m, "cascade_timer_lateness_seconds_count") == 0
    assert value(m, "cascade_events_ingested_total", result="accepted") == 0


async def test_middleware_observes_route_templates_methods_and_statuses(aiohttp_client: Any) -> None:
    engine = Engine(ManualClock(T0), {}, EngineConfig(shards=1, gc_freeze_interval_s=0)).start()
    try:
        metrics = HttpMetrics(engine, CollectorRegistry())

        async def get_send(request: web.Request) -> web.Response:
            return web.json_response({"id": request.match_info["id"]})

        async def cancel_send(request: web.Request) -> web.Response:
            raise web.HTTPConflict(text="already finished")

        app = web.Application(middlewares=[metrics.middleware])
        app.router.add_get("/v1/sends/{id}", get_send)
        app.router.add_delete("/v1/sends/{id}", cancel_send)
        app.router.add_get("/metrics", metrics.handler)
        client: TestClient[web.Request, web.Application] = await aiohttp_client(app)
        for sid in ("snd_1", "snd_2"):
            assert (await client.get(f"/v1/sends/{sid}")).status == 200
        assert (await client.delete("/v1/sends/snd_1")).status == 409
        assert (await client.get("/nowhere")).status == 404
        assert (await client.post("/v1/sends/snd_1")).status == 405
        resp = await client.get("/metrics")
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        m = parse(await resp.text())
        name = "cascade_http_request_duration_seconds_count"
        assert value(m, name, route="/v1/sends/{id}", method="GET", status="200") == 2
        assert value(m, name, route="/v1/sends/{id}", method="DELETE", status="409") == 1
        assert value(m, name, route="unmatched", method="GET", status="404") == 1
        assert value(m, name, route="unmatched", method="POST", status="405") == 1
        assert value(m, "cascade_http_request_duration_seconds_bucket",
                     route="/v1/sends/{id}", method="GET", status="200", le="+Inf") == 2
        assert value(m, "cascade_metrics_engine_up") == 1
    finally:
        engine.stop()
