"""Quiet hours (rule 12), black-box under the manual clock: a step of a
listed channel that falls due inside the recipient's quiet hours, in the
recipient's own time zone, waits for their end; its window starts when it
fires. Zones with and without daylight saving, and nights the clocks change."""

from __future__ import annotations

from typing import Any, AsyncIterator

import pytest
from aiohttp.test_utils import TestClient
from prometheus_client import CollectorRegistry

from cascade.campaigns import attach_campaigns
from cascade.config import Settings
from cascade.domain.timefmt import iso, parse_iso
from cascade.engine import Engine, EngineConfig, ManualClock, MemoryProvider
from cascade.http import build_app
from cascade.http.metrics import HttpMetrics

QUIET = {"start": "22:00", "end": "08:00", "channels": ["push", "sms"]}
PUSH_FIRST = {"channels": [
    {"channel": "push", "stopCondition": "clicked", "waitMinutes": 30, "content": {"body": "hi"}},
    {"channel": "sms", "content": {"body": "hi"}},
], "config": {"sequenceEnabled": True, "quietHours": QUIET}}
INAPP_FIRST = {"channels": [
    {"channel": "inapp", "stopCondition": "viewed", "waitMinutes": 60, "content": {"body": "hi"}},
    {"channel": "push", "stopCondition": "clicked", "waitMinutes": 30, "content": {"body": "hi"}},
    {"channel": "sms", "content": {"body": "hi"}},
], "config": {"sequenceEnabled": True, "quietHours": QUIET}}


@pytest.fixture
async def at(aiohttp_client: Any) -> AsyncIterator[Any]:
    """A client over an engine whose manual clock starts at the given instant."""
    engines: list[Engine] = []

    async def make(start: str) -> tuple[TestClient, dict[str, MemoryProvider]]:
        providers = {ch: MemoryProvider(ch) for ch in ("push", "email", "sms")}
        engine = Engine(ManualClock(parse_iso(start)), providers, EngineConfig(shards=2))
        attach_campaigns(engine)
        engines.append(engine.start())
        metrics = HttpMetrics(engine, CollectorRegistry())
        client = await aiohttp_client(build_app(engine, Settings(), metrics=metrics))
        return client, providers

    yield make
    for engine in engines:
        engine.stop()


async def ok(client: TestClient, method: str, path: str, body: Any = None) -> Any:
    resp = await client.request(method, path, json=body)
    assert resp.status < 300, await resp.text()
    return await resp.json()


async def send_to(client: TestClient, template: dict[str, Any], tz: str | None) -> dict[str, Any]:
    await ok(client, "PUT", "/v1/templates/t", template)
    recipient: dict[str, Any] = {"id": "u", "pushTokens": ["tok"], "phone": "+15550100"}
    if tz is not None:
        recipient["timezone"] = tz
    body: dict[str, Any] = await ok(client, "POST", "/v1/sends", {"template": "t", "recipient": recipient})
    return body


async def advance_to(client: TestClient, instant: str) -> None:
    now = parse_iso((await ok(client, "GET", "/v1/admin/clock"))["now"])
    await ok(client, "POST", "/v1/admin/clock", {"advanceSeconds": parse_iso(instant) - now})


@pytest.mark.parametrize("tz, start, until, hours", [
    # Berlin springs forward on 2027-03-28 at 02:00: 23:00 CET to 08:00 CEST is 8 hours, not 9.
    ("Europe/Berlin", "2027-03-27T22:00:00.000Z", "2027-03-28T06:00:00.000Z", 8),
    # New York falls back on 2027-11-07 at 02:00: 23:00 EDT to 08:00 EST is 10 hours.
    ("America/New_York", "2027-11-07T03:00:00.000Z", "2027-11-07T13:00:00.000Z", 10),
    # Kolkata has no daylight saving: 05:30 IST is 2 h 30 before 08:00.
    ("Asia/Kolkata", "2026-11-27T00:00:00.000Z", "2026-11-27T02:30:00.000Z", 2.5),
    # No time zone: UTC. 23:00 to 08:00.
    (None, "2026-11-27T23:00:00.000Z", "2026-11-28T08:00:00.000Z", 9),
])
async def test_a_step_due_in_quiet_hours_waits_for_their_end_in_the_recipients_zone(
        at: Any, tz: str | None, start: str, until: str, hours: float) -> None:
    client, providers = await at(start)
    send = await send_to(client, PUSH_FIRST, tz)
    push = send["steps"][0]
    assert (push["status"], push["deferredUntil"], push["firedAt"]) == ("deferred", until, None)
    assert parse_iso(until) - parse_iso(start) == hours * 3600
    assert providers["push"].messages == []

    await advance_to(client, iso(parse_iso(until) - 1) or "")
    assert (await ok(client, "GET", f"/v1/sends/{send['id']}"))["steps"][0]["status"] == "deferred"
    await advance_to(client, until)
    view = await ok(client, "GET", f"/v1/sends/{send['id']}")
    push = view["steps"][0]
    assert push["status"] == "waiting" and push["firedAt"] == until and "deferredUntil" not in push
    assert push["deadline"] == iso(parse_iso(until) + 30 * 60)  # the window starts when it fires
    assert [m.message_id for m in providers["push"].messages] == [push["messageId"]]
    assert [(e["step"], e["what"]) for e in view["history"]] == [(1, "deferred"), (1, "fired")]
    assert view["history"][0]["detail"] == {"until": until, "reason": "quiet_hours", "after": "start"}


async def test_outside_quiet_hours_nothing_waits(at: Any) -> None:
    client, providers = await at("2027-03-28T12:00:00.000Z")  # 14:00 in Berlin
    send = await send_to(client, PUSH_FIRST, "Europe/Berlin")
    assert send["steps"][0]["status"] == "waiting" and len(providers["push"].messages) == 1


async def test_inapp_is_never_deferred_and_an_escalation_into_quiet_hours_waits(at: Any) -> None:
    client, providers = await at("2026-11-27T21:30:00.000Z")  # UTC recipient; quiet from 22:00
    send = await send_to(client, INAPP_FIRST, None)
    assert send["steps"][0]["status"] == "waiting"  # in-app fires at once
    await advance_to(client, "2026-11-27T22:30:00.000Z")  # its hour ends inside quiet hours
    view = await ok(client, "GET", f"/v1/sends/{send['id']}")
    assert [s["status"] for s in view["steps"]] == ["fired", "deferred", "pending"]
    assert view["steps"][1]["deferredUntil"] == "2026-11-28T08:00:00.000Z"
    assert providers["push"].messages == []
    # A late view of step 1 (rule 3) stops the chain: the deferred push never fires.
    await ok(client, "POST", "/v1/events", {"messageId": view["steps"][0]["messageId"], "type": "viewed"})
    view = await ok(client, "GET", f"/v1/sends/{send['id']}")
    assert view["status"] == "stopped" and [s["status"] for s in view["steps"]] == ["stopped", "pending", "pending"]
    await advance_to(client, "2026-11-28T09:00:00.000Z")
    assert providers["push"].messages == []


async def test_deferrals_are_counted_in_metrics_and_prometheus(at: Any) -> None:
    client, _ = await at("2026-11-27T23:00:00.000Z")
    await send_to(client, PUSH_FIRST, None)
    metrics = await ok(client, "GET", "/v1/templates/t/metrics")
    assert metrics["steps"][0]["deferred"] == 1 and metrics["steps"][1]["deferred"] == 0
    text = await (await client.get("/metrics")).text()
    assert 'cascade_step_signals_total{channel="push",signal="deferred",step="1",template="t"} 1.0' in text


async def test_quiet_hours_are_validated_with_paths(at: Any) -> None:
    client, _ = await at("2026-11-27T12:00:00.000Z")
    bad = {**PUSH_FIRST, "config": {"sequenceEnabled": True,
                                    "quietHours": {"start": "25:00", "end": "8", "channels": ["fax"]}}}
    resp = await client.put("/v1/templates/t", json=bad)
    assert resp.status == 422
    paths = {d["path"] for d in (await resp.json())["error"]["details"]}
    assert paths == {"$.config.quietHours.start", "$.config.quietHours.end", "$.config.quietHours.channels"}


async def test_without_channels_every_channel_but_inapp_is_quiet(at: Any) -> None:
    client, _ = await at("2026-11-27T23:00:00.000Z")
    template = {**INAPP_FIRST, "config": {"sequenceEnabled": True, "quietHours": {"start": "22:00", "end": "08:00"}}}
    send = await send_to(client, template, None)
    assert send["steps"][0]["status"] == "waiting"  # inapp
    stored = await ok(client, "GET", "/v1/templates/t")
    assert stored["config"]["quietHours"] == {"start": "22:00", "end": "08:00", "channels": ["push", "email", "sms"]}
    await advance_to(client, "2026-11-28T00:00:00.000Z")
    assert (await ok(client, "GET", f"/v1/sends/{send['id']}"))["steps"][1]["status"] == "deferred"


@pytest.mark.parametrize("quiet, path", [
    ({"start": "²²:00", "end": "08:00"}, "$.config.quietHours.start"),  # digits, but not ASCII ones
    ({"start": "２２:００", "end": "08:00"}, "$.config.quietHours.start"),
    ({"start": "22:00", "end": "22:00"}, "$.config.quietHours.end"),
    ({"start": "22:00", "end": "08:00", "channels": ["push", "push"]}, "$.config.quietHours.channels"),
    ({"start": "22:00", "end": "08:00", "channels": ["inapp"]}, "$.config.quietHours.channels"),
])
async def test_quiet_hours_that_mean_nothing_or_are_not_hh_mm_are_refused(at: Any, quiet: dict[str, Any],
                                                                          path: str) -> None:
    client, _ = await at("2026-11-27T12:00:00.000Z")
    resp = await client.put("/v1/templates/t", json={**PUSH_FIRST, "config": {"sequenceEnabled": True,
                                                                             "quietHours": quiet}})
    assert resp.status == 422
    assert [d["path"] for d in (await resp.json())["error"]["details"]] == [path]
