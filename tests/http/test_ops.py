"""Operational behaviour: health and readiness, /metrics, the OpenAPI
document, request ids, JSON errors for unknown routes and methods,
back-pressure, and the one mapping of unexpected failures to 500."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import msgspec
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from cascade.engine import Engine, EngineConfig, ManualClock
from cascade.http import openapi


async def test_healthz_answers_while_the_process_runs(client: TestClient) -> None:
    resp = await client.get("/healthz")
    assert resp.status == 200 and await resp.json() == {"status": "ok"}


async def test_readyz_is_503_until_recovery_is_done(make_client: Any, error_of: Any) -> None:
    ready = False
    client = await make_client(ready=lambda: ready)
    resp = await client.get("/readyz")
    assert resp.status == 503 and resp.headers["Retry-After"] == "1"
    error_of(await resp.json(), "not_ready")
    ready = True
    resp = await client.get("/readyz")
    assert resp.status == 200 and await resp.json() == {"status": "ready"}


async def test_the_api_answers_503_rather_than_half_loaded_state_until_ready(make_client: Any, error_of: Any) -> None:
    ready = False
    client = await make_client(ready=lambda: ready)
    for method, path in [("GET", "/v1/templates"), ("GET", "/v1/templates/order-shipped"),
                         ("POST", "/v1/sends"), ("GET", "/v1/admin/clock")]:
        resp = await client.request(method, path, json={})
        assert resp.status == 503 and resp.headers["Retry-After"] == "1", path
        error_of(await resp.json(), "not_ready")
    assert (await client.get("/healthz")).status == 200
    ready = True
    assert (await client.get("/v1/templates")).status == 200


async def test_metrics_without_a_metrics_provider_is_an_empty_200(client: TestClient) -> None:
    resp = await client.get("/metrics")
    assert resp.status == 200 and await resp.text() == ""


class FakeMetrics:
    def __init__(self) -> None:
        self.seen: list[tuple[str, int]] = []

        @web.middleware
        async def middleware(request: web.Request, handler: Any) -> web.StreamResponse:
            response = await handler(request)
            self.seen.append((request.path, response.status))
            return response

        self.middleware = middleware

    async def handler(self, request: web.Request) -> web.Response:
        return web.Response(text="cascade_up 1\n", content_type="text/plain")


async def test_the_metrics_middleware_sees_the_final_status_of_every_request(make_client: Any) -> None:
    metrics = FakeMetrics()
    client = await make_client(metrics=metrics)
    assert await (await client.get("/metrics")).text() == "cascade_up 1\n"
    await client.get("/v1/templates/nope")
    await client.put("/v1/templates/x", data=b"{", headers={"Content-Type": "application/json"})
    await client.get("/no/such/route")
    assert metrics.seen == [("/metrics", 200), ("/v1/templates/nope", 404), ("/v1/templates/x", 400),
                            ("/no/such/route", 404)]


async def test_unknown_routes_and_wrong_methods_answer_json_errors(client: TestClient, error_of: Any) -> None:
    resp = await client.get("/v2/whatever")
    assert resp.status == 404
    error_of(await resp.json(), "not_found")
    resp = await client.patch("/v1/templates/x")
    assert resp.status == 405 and "PUT" in resp.headers["Allow"]
    error_of(await resp.json(), "method_not_allowed")


async def test_every_response_carries_a_request_id(client: TestClient) -> None:
    resp = await client.get("/healthz", headers={"X-Request-Id": "abc-123"})
    assert resp.headers["X-Request-Id"] == "abc-123"
    generated = [(await client.get("/healthz")).headers["X-Request-Id"] for _ in range(2)]
    assert generated[0] != generated[1]
    resp = await client.get("/healthz", headers={"X-Request-Id": "no spaces or\tcontrol"})
    assert resp.headers["X-Request-Id"] != "no spaces or\tcontrol"
    resp = await client.get("/nowhere", headers={"X-Request-Id": "r-404"})
    assert resp.headers["X-Request-Id"] == "r-404"


async def test_each_request_is_logged_at_debug_with_its_id(client: TestClient,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, logger="cascade.http"):
        await client.get("/v1/templates/nope", headers={"X-Request-Id": "trace-me"})
    [record] = [r for r in caplog.records if r.name == "cascade.http"]
    assert record.levelno == logging.DEBUG
    message = record.getMessage()
    assert "id=trace-me" in message and "method=GET" in message and "route=/v1/templates/{id}" in message
    assert "status=404" in message and "ms=" in message


async def test_openapi_document_is_3_1_and_covers_every_route(client: TestClient) -> None:
    resp = await client.get("/openapi.json")
    assert resp.status == 200
    doc = await resp.json()
    assert doc["openapi"].startswith("3.1")
    for path, method in [("/v1/templates/{id}", "put"), ("/v1/sends", "post"), ("/v1/events", "post"),
                         ("/v1/recipients/{id}/inbox", "get"), ("/v1/admin/clock", "post"),
                         ("/v1/templates/{id}/metrics", "get"), ("/healthz", "get")]:
        assert method in doc["paths"][path]
    schemas = doc["components"]["schemas"]
    wait = schemas["StepBody"]["properties"]["waitMinutes"]
    assert [t["type"] for t in wait["anyOf"]] == ["integer", "null"] and "1440" in json.dumps(wait)
    assert schemas["TemplateBody"]["additionalProperties"] is False
    send_op = doc["paths"]["/v1/sends"]["post"]
    assert send_op["requestBody"]["content"]["application/json"]["schema"] == {"oneOf": [
        {"$ref": "#/components/schemas/SendBody"}, {"$ref": "#/components/schemas/SendBatch"}]}
    assert set(send_op["responses"]) >= {"202", "400", "401", "403", "404", "409", "413", "415", "422"}


async def test_openapi_documents_both_answers_of_a_template_put_and_of_a_send(client: TestClient) -> None:
    doc = await (await client.get("/openapi.json")).json()
    view = {"$ref": "#/components/schemas/TemplateView"}
    put = doc["paths"]["/v1/templates/{id}"]["put"]["responses"]
    assert put["201"]["content"]["application/json"]["schema"] == view
    assert put["200"]["content"]["application/json"]["schema"] == view
    assert "replaced" in put["200"]["description"].lower()
    send = doc["paths"]["/v1/sends"]["post"]["responses"]
    view = {"$ref": "#/components/schemas/SendView"}
    assert send["202"]["content"]["application/json"]["schema"] == view
    assert send["200"]["content"]["application/json"]["schema"] == {
        "oneOf": [view, {"$ref": "#/components/schemas/SendBatchResult"}]}  # a repeat, or a batch's answers
    assert "idempotencyKey" in send["200"]["description"]
    assert set(doc["paths"]["/v1/sends/{id}"]["get"]["responses"]) & {"201", "202"} == set()


async def test_responses_match_the_documented_views(client: TestClient, put_shipped: Any) -> None:
    def conforms(body: Any, view: Any) -> None:
        msgspec.convert(body, view)  # raises on a missing field or a wrong type

    conforms(await put_shipped(), openapi.TemplateView)
    send = await (await client.post("/v1/sends", json={"template": "order-shipped", "recipient": "u"})).json()
    conforms(send, openapi.SendView)
    conforms(await (await client.get("/v1/templates")).json(), openapi.TemplateList)
    conforms(await (await client.get("/v1/recipients/u/inbox")).json(), openapi.InboxPage)
    conforms(await (await client.get("/v1/templates/order-shipped/metrics")).json(), openapi.TemplateMetrics)
    conforms(await (await client.get("/v1/recipients/u")).json(), openapi.RecipientView)
    conforms(await (await client.post("/v1/events", json={"type": "x"})).json(), openapi.EventsResult)
    conforms(await (await client.get("/v1/admin/clock")).json(), openapi.ClockView)
    conforms(await (await client.get("/nope")).json(), openapi.Error)


class SlowHooks:
    def __init__(self) -> None:
        self.entered = asyncio.Event()
        self.release = asyncio.Event()

    async def snapshot(self) -> dict[str, Any]:
        self.entered.set()
        await self.release.wait()
        return {"file": "s"}

    async def list_snapshots(self) -> list[dict[str, Any]]:
        raise RuntimeError("disk on fire")


async def test_beyond_max_inflight_requests_the_answer_is_503_with_retry_after(
        make_client: Any, settings_of: Any, error_of: Any) -> None:
    hooks = SlowHooks()
    client = await make_client(settings_of(server={"max_inflight_requests": 1}), admin=hooks)
    held = asyncio.create_task(client.post("/v1/admin/snapshots"))
    await hooks.entered.wait()
    resp = await client.get("/v1/templates")
    assert resp.status == 503 and resp.headers["Retry-After"] == "1"
    error_of(await resp.json(), "overloaded")
    assert (await client.get("/healthz")).status == 200  # operational endpoints stay open
    hooks.release.set()
    assert (await held).status == 200
    assert (await client.get("/v1/templates")).status == 200


async def test_an_overloaded_engine_answers_503_with_retry_after(make_client: Any, put_shipped: Any,
                                                                 error_of: Any) -> None:
    full = Engine(ManualClock(0.0), config=EngineConfig(shards=1, max_pending_per_shard=0)).start()
    try:
        client = await make_client(on=full)
        await put_shipped(on=client)
        resp = await client.post("/v1/sends", json={"template": "order-shipped", "recipient": "u"})
        assert resp.status == 503 and int(resp.headers["Retry-After"]) >= 1
        error_of(await resp.json(), "overloaded")
    finally:
        full.stop()


async def test_an_unexpected_failure_is_500_internal_and_logged_with_the_request_id(
        make_client: Any, error_of: Any, caplog: pytest.LogCaptureFixture) -> None:
    client = await make_client(admin=SlowHooks())
    with caplog.at_level(logging.ERROR, logger="cascade.http"):
        resp = await client.get("/v1/admin/snapshots", headers={"X-Request-Id": "boom-1"})
    assert resp.status == 500
    assert "boom-1" in error_of(await resp.json(), "internal")["message"]
    assert any("boom-1" in r.getMessage() and r.exc_info for r in caplog.records)
