"""POST /v1/sends with {"sends": [...]}: many sends in one request, each
answered on its own by index, as a single request would have been."""

from __future__ import annotations

from typing import Any

from aiohttp.test_utils import TestClient


def send(i: int, **extra: Any) -> dict[str, Any]:
    return {"template": "order-shipped", "recipient": f"u-{i}", "data": {"order": {"id": f"A{i}"}}, **extra}


async def test_a_batch_starts_every_send_and_answers_each_with_its_view(client: TestClient, put_shipped: Any) -> None:
    await put_shipped()
    resp = await client.post("/v1/sends", json={"sends": [send(i) for i in range(3)]})
    assert resp.status == 200
    body = await resp.json()
    assert (body["accepted"], body["repeated"], body["failed"]) == (3, 0, 0)
    assert [r["index"] for r in body["results"]] == [0, 1, 2]
    for i, r in enumerate(body["results"]):
        assert r["status"] == 202 and r["send"]["recipient"] == f"u-{i}" and r["send"]["status"] == "active"
        got = await (await client.get(f"/v1/sends/{r['send']['id']}")).json()
        assert got["steps"][0]["status"] == "waiting"


async def test_a_bad_item_is_answered_with_its_own_error_and_never_fails_the_rest(
        client: TestClient, put_shipped: Any, error_of: Any) -> None:
    await put_shipped()
    first = await (await client.post("/v1/sends", json=send(9, idempotencyKey="k9"))).json()
    items = [
        send(1),
        {"template": "no-such-template", "recipient": "u-2"},
        {"template": "order-shipped", "recipient": "has space"},
        {"template": "order-shipped", "recipient": "u-4", "colour": "red"},
        send(9, idempotencyKey="k9"),  # the same request again: the same send
        {**send(9, idempotencyKey="k9"), "data": {"other": 1}},  # the same key, another body
        send(7),
    ]
    body = await (await client.post("/v1/sends", json={"sends": items})).json()
    statuses = [r["status"] for r in body["results"]]
    assert statuses == [202, 404, 422, 422, 200, 409, 202]
    assert (body["accepted"], body["repeated"], body["failed"]) == (2, 1, 4)
    results = body["results"]
    assert results[4]["send"]["id"] == first["id"]
    assert error_of({"error": results[1]["error"]}, "not_found")
    bad_recipient = error_of({"error": results[2]["error"]})
    assert bad_recipient["details"][0]["path"] == "$.sends[2].recipient"
    unknown_field = error_of({"error": results[3]["error"]})
    assert unknown_field["details"][0]["path"] == "$.sends[3].colour"
    assert error_of({"error": results[5]["error"]}, "conflict")


async def test_more_than_a_thousand_sends_in_one_batch_is_413(client: TestClient, put_shipped: Any,
                                                              error_of: Any) -> None:
    await put_shipped()
    resp = await client.post("/v1/sends", json={"sends": [send(i) for i in range(1001)]})
    assert resp.status == 413
    error_of(await resp.json(), "payload_too_large")


async def test_a_batch_with_other_keys_or_not_a_list_is_400(client: TestClient, put_shipped: Any,
                                                           error_of: Any) -> None:
    await put_shipped()
    for body in ({"sends": [send(1)], "extra": 1}, {"sends": "u-1"}):
        resp = await client.post("/v1/sends", json=body)
        assert resp.status == 400, body
        error_of(await resp.json(), "bad_request")


async def test_an_empty_batch_starts_nothing(client: TestClient, put_shipped: Any) -> None:
    await put_shipped()
    body = await (await client.post("/v1/sends", json={"sends": []})).json()
    assert body == {"accepted": 0, "repeated": 0, "failed": 0, "results": []}


async def test_a_single_send_with_a_wrong_field_is_still_its_own_422(client: TestClient, put_shipped: Any,
                                                                    error_of: Any) -> None:
    await put_shipped()
    resp = await client.post("/v1/sends", json={"template": "order-shipped", "recipient": 5})
    assert resp.status == 422
    assert error_of(await resp.json())["details"][0]["path"] == "$.recipient"


async def test_a_number_json_cannot_hold_fails_its_item_only(client: TestClient, put_shipped: Any,
                                                           error_of: Any) -> None:
    await put_shipped()
    raw = ('{"sends": [{"template": "order-shipped", "recipient": "u-1", "data": {"a": 1e999}},'
           ' {"template": "order-shipped", "recipient": "u-2"}]}')
    resp = await client.post("/v1/sends", data=raw, headers={"Content-Type": "application/json"})
    assert resp.status == 200
    body = await resp.json()
    assert [r["status"] for r in body["results"]] == [422, 202]
    assert error_of({"error": body["results"][0]["error"]})["details"][0]["path"].startswith("$.sends[0]")
