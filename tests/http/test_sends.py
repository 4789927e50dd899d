"""Sends over HTTP: the API.md example end to end, idempotency keys,
reading and cancelling, inline recipients, and what a deleted template
means for new and active sends."""

from __future__ import annotations

from typing import Any

from aiohttp.test_utils import TestClient

from cascade.engine import Engine, MemoryProvider

SEND = {"template": "order-shipped", "recipient": "u-42", "data": {"order": {"id": "A1"}},
        "idempotencyKey": "order-A1-shipped"}


async def test_the_api_md_example_flow(client: TestClient, put_shipped: Any) -> None:
    await put_shipped()
    resp = await client.post("/v1/sends", json=SEND)
    assert resp.status == 202
    send = await resp.json()
    assert send["status"] == "active" and send["template"] == "order-shipped" and send["templateVersion"] == 1
    step1 = send["steps"][0]
    assert step1["status"] == "waiting" and step1["messageId"] == send["id"] + ".1"
    assert step1["deadline"] == "2026-11-27T10:30:00.000Z"

    inbox = await (await client.get("/v1/recipients/u-42/inbox")).json()
    assert [m["messageId"] for m in inbox["messages"]] == [step1["messageId"]]
    assert inbox["messages"][0]["content"] == {"title": "Shipped", "body": "Order A1 is on its way"}
    listed_again = await (await client.get("/v1/recipients/u-42/inbox")).json()
    assert listed_again["messages"][0]["deliveredAt"] == "2026-11-27T10:00:00.000Z"  # listing marked it

    resp = await client.post("/v1/events", json={"messageId": step1["messageId"], "type": "viewed",
                                                 "at": "2026-11-27T10:05:00.000Z"})
    assert resp.status == 200 and await resp.json() == {"accepted": 1, "duplicates": 0, "errors": []}

    view = await (await client.get(f"/v1/sends/{send['id']}")).json()
    assert view["status"] == "stopped" and view["stoppedBy"] == {"step": 1, "signal": "viewed"}
    metrics = await (await client.get("/v1/templates/order-shipped/metrics")).json()
    assert metrics["sends"] == {"started": 1, "active": 0, "stopped": 1, "completed": 0, "cancelled": 0, "failed": 0}
    assert metrics["steps"][0] == {"step": 1, "channel": "inapp", "requested": 1, "delivered": 1, "viewed": 1,
                                   "clicked": 0, "failed": 0, "skipped": 0, "stopped": 1, "escalated": 0}
    assert metrics["steps"][1]["viewed"] is None and metrics["steps"][1]["requested"] == 0


async def test_a_repeated_idempotency_key_answers_200_with_the_same_send(client: TestClient, put_shipped: Any) -> None:
    await put_shipped()
    first = await client.post("/v1/sends", json=SEND)
    again = await client.post("/v1/sends", json=SEND)
    assert (first.status, again.status) == (202, 200)
    assert (await first.json())["id"] == (await again.json())["id"]


async def test_the_same_idempotency_key_with_another_body_is_409(client: TestClient, put_shipped: Any,
                                                                 error_of: Any) -> None:
    await put_shipped()
    assert (await client.post("/v1/sends", json=SEND)).status == 202
    resp = await client.post("/v1/sends", json={**SEND, "data": {"order": {"id": "B2"}}})
    assert resp.status == 409
    error_of(await resp.json(), "conflict")


async def test_a_repeated_idempotency_key_is_the_same_request_whatever_the_order_of_its_json_keys(
        client: TestClient, put_shipped: Any) -> None:
    await put_shipped()
    json_type = {"Content-Type": "application/json"}
    first = await client.post("/v1/sends", headers=json_type, data=(
        '{"template": "order-shipped", "idempotencyKey": "k-order",'
        ' "recipient": {"id": "u-9", "email": "u9@example.com", "preferences": {"sms": false, "push": true}},'
        ' "data": {"order": {"id": "A1", "items": [{"sku": "x", "n": 1}, {"sku": "y", "n": 2}]}, "who": "Ada"}}'))
    again = await client.post("/v1/sends", headers=json_type, data=(
        '{"data": {"who": "Ada", "order": {"items": [{"n": 1, "sku": "x"}, {"n": 2, "sku": "y"}], "id": "A1"}},'
        ' "recipient": {"preferences": {"push": true, "sms": false}, "email": "u9@example.com", "id": "u-9"},'
        ' "idempotencyKey": "k-order", "template": "order-shipped"}'))
    assert (first.status, again.status) == (202, 200), await again.text()
    assert (await first.json())["id"] == (await again.json())["id"]
    reordered_list = await client.post("/v1/sends", headers=json_type, data=(
        '{"template": "order-shipped", "idempotencyKey": "k-order",'
        ' "recipient": {"id": "u-9", "email": "u9@example.com", "preferences": {"sms": false, "push": true}},'
        ' "data": {"order": {"id": "A1", "items": [{"sku": "y", "n": 2}, {"sku": "x", "n": 1}]}, "who": "Ada"}}'))
    assert reordered_list.status == 409  # an array's order is part of its value


async def test_sends_without_a_key_are_each_new(client: TestClient, put_shipped: Any) -> None:
    await put_shipped()
    body = {"template": "order-shipped", "recipient": "u-1"}
    a, b = await client.post("/v1/sends", json=body), await client.post("/v1/sends", json=body)
    assert (a.status, b.status) == (202, 202)
    assert (await a.json())["id"] != (await b.json())["id"]


async def test_an_inline_recipient_is_upserted_first(client: TestClient, put_shipped: Any) -> None:
    await put_shipped()
    body = {"template": "order-shipped", "recipient": {"id": "u-7", "email": "u7@example.com", "pushTokens": ["tok"]}}
    assert (await client.post("/v1/sends", json=body)).status == 202
    rcpt = await (await client.get("/v1/recipients/u-7")).json()
    assert rcpt["id"] == "u-7" and rcpt["email"] == "u7@example.com" and rcpt["pushTokens"] == ["tok"]


async def test_an_inline_recipient_without_id_is_422_naming_the_path(client: TestClient, put_shipped: Any,
                                                                     error_of: Any) -> None:
    await put_shipped()
    resp = await client.post("/v1/sends", json={"template": "order-shipped", "recipient": {"email": "a@b.c"}})
    assert resp.status == 422
    assert error_of(await resp.json())["details"][0]["path"] == "$.recipient.id"
    resp = await client.post("/v1/sends", json={"template": "order-shipped", "recipient": {"id": "u", "email": "x"}})
    assert resp.status == 422
    assert error_of(await resp.json())["details"][0]["path"] == "$.recipient.email"


async def test_a_send_of_an_unknown_template_is_404(client: TestClient, error_of: Any) -> None:
    resp = await client.post("/v1/sends", json={"template": "nope", "recipient": "u-1"})
    assert resp.status == 404
    error_of(await resp.json(), "not_found")


async def test_data_the_journal_cannot_store_is_422(client: TestClient, put_shipped: Any, error_of: Any) -> None:
    await put_shipped()
    resp = await client.post("/v1/sends", json={"template": "order-shipped", "recipient": "u", "data": {"n": 2**70}})
    assert resp.status == 422
    assert error_of(await resp.json())["details"][0]["path"] == "$.data.n"
    deep: list[Any] = []
    for _ in range(50):
        deep = [deep]
    resp = await client.post("/v1/sends", json={"template": "order-shipped", "recipient": "u", "data": {"d": deep}})
    assert resp.status == 422


async def test_a_bad_recipient_id_is_422(client: TestClient, put_shipped: Any) -> None:
    await put_shipped()
    resp = await client.post("/v1/sends", json={"template": "order-shipped", "recipient": "has space"})
    assert resp.status == 422


async def test_get_and_cancel_a_send(client: TestClient, put_shipped: Any, error_of: Any) -> None:
    await put_shipped()
    send = await (await client.post("/v1/sends", json=SEND)).json()
    got = await client.get(f"/v1/sends/{send['id']}")
    assert got.status == 200 and (await got.json())["id"] == send["id"]
    cancelled = await client.delete(f"/v1/sends/{send['id']}")
    assert cancelled.status == 200
    view = await cancelled.json()
    assert view["status"] == "cancelled" and [s["status"] for s in view["steps"]] == ["cancelled", "pending"]
    again = await client.delete(f"/v1/sends/{send['id']}")
    assert again.status == 409
    error_of(await again.json(), "already_finished")


async def test_unknown_or_malformed_send_ids_are_404(client: TestClient) -> None:
    for sid in ("snd_000000000000001", "nope", "snd_zzzzzzzzzzzzzzz"):
        assert (await client.get(f"/v1/sends/{sid}")).status == 404
        assert (await client.delete(f"/v1/sends/{sid}")).status == 404


async def test_deleting_a_template_refuses_new_sends_while_active_ones_finish(
        client: TestClient, put_shipped: Any, providers: dict[str, MemoryProvider], engine: Engine) -> None:
    await put_shipped()
    await client.put("/v1/recipients/u-42", json={"pushTokens": ["tok-1"]})
    send = await (await client.post("/v1/sends", json=SEND)).json()
    assert (await client.delete("/v1/templates/order-shipped")).status == 200
    refused = await client.post("/v1/sends", json={"template": "order-shipped", "recipient": "u-9"})
    assert refused.status == 404
    resp = await client.post("/v1/admin/clock", json={"advanceSeconds": 30 * 60})
    assert resp.status == 200
    view = await (await client.get(f"/v1/sends/{send['id']}")).json()
    assert view["status"] == "completed" and [s["status"] for s in view["steps"]] == ["fired", "fired"]
    assert [m.message_id for m in providers["push"].messages] == [send["id"] + ".2"]
    assert providers["push"].messages[0].recipient["pushTokens"] == ["tok-1"]
