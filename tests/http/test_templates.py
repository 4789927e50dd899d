"""Templates over HTTP: create/replace/read/list/delete, and validation
errors that name the JSON path and the allowed values."""

from __future__ import annotations

import json
from typing import Any, AsyncIterator

from aiohttp.test_utils import TestClient


async def test_put_creates_with_201_then_replaces_with_200_as_a_new_version(client: TestClient, shipped: Any) -> None:
    first = await client.put("/v1/templates/order-shipped", json=shipped)
    assert first.status == 201
    created = await first.json()
    assert created["id"] == "order-shipped" and created["version"] == 1
    assert created["name"] == "Order shipped" and created["config"] == {"sequenceEnabled": True}
    assert created["channels"] == shipped["channels"]
    assert created["createdAt"] == "2026-11-27T10:00:00.000Z" and created["updatedAt"] == created["createdAt"]
    second = await client.put("/v1/templates/order-shipped", json={**shipped, "name": "Shipped!"})
    assert second.status == 200
    replaced = await second.json()
    assert replaced["version"] == 2 and replaced["name"] == "Shipped!"


async def test_get_and_list_answer_the_current_version(client: TestClient, put_shipped: Any) -> None:
    await put_shipped()
    await put_shipped("another")
    one = await client.get("/v1/templates/order-shipped")
    assert one.status == 200 and (await one.json())["id"] == "order-shipped"
    listed = await (await client.get("/v1/templates")).json()
    assert [t["id"] for t in listed["templates"]] == ["another", "order-shipped"]


async def test_null_fields_mean_absent(client: TestClient) -> None:
    body = {"name": None, "config": None, "channels": [{"channel": "inapp", "stopCondition": None,
                                                         "waitMinutes": None, "content": {"t": "x"}}]}
    resp = await client.put("/v1/templates/plain", json=body)
    assert resp.status == 201
    view = await resp.json()
    assert view["name"] == "plain" and view["channels"] == [{"channel": "inapp", "content": {"t": "x"}}]


async def test_unknown_template_is_404_with_the_error_body(client: TestClient, error_of: Any) -> None:
    resp = await client.get("/v1/templates/nope")
    assert resp.status == 404
    assert "nope" in error_of(await resp.json(), "not_found")["message"]


async def test_delete_answers_the_deleted_template_and_then_404(client: TestClient, put_shipped: Any) -> None:
    await put_shipped()
    resp = await client.delete("/v1/templates/order-shipped")
    assert resp.status == 200 and (await resp.json())["id"] == "order-shipped"
    assert (await client.get("/v1/templates/order-shipped")).status == 404
    assert (await client.delete("/v1/templates/order-shipped")).status == 404


async def test_a_disallowed_wait_window_is_422_naming_path_and_allowed_values(
        client: TestClient, shipped: Any, error_of: Any) -> None:
    shipped["channels"][0]["waitMinutes"] = 15
    resp = await client.put("/v1/templates/t", json=shipped)
    assert resp.status == 422
    err = error_of(await resp.json(), "template_invalid")
    assert err["details"] == [{"path": "$.channels[0].waitMinutes",
                               "message": "waitMinutes 15 is not allowed; use one of 5, 10, 30, 60, 240, 1440"}]


async def test_a_wait_window_of_another_type_is_422_naming_path_and_allowed_values(
        client: TestClient, shipped: Any, error_of: Any) -> None:
    for wait, spelled in ((5.5, "5.5"), ("5", '"5"'), (True, "true"), (5.0, "5.0"), ([5], "[5]"), ({}, "{}")):
        shipped["channels"][0]["waitMinutes"] = wait
        resp = await client.put("/v1/templates/t", json=shipped)
        assert resp.status == 422, wait
        err = error_of(await resp.json(), "template_invalid")
        assert err["details"] == [{"path": "$.channels[0].waitMinutes", "message":
                                   f"waitMinutes {spelled} is not allowed; use one of 5, 10, 30, 60, 240, 1440"}]
    assert (await client.get("/v1/templates/t")).status == 404


async def test_a_wrong_wait_window_is_reported_with_the_other_problems_of_the_template(
        client: TestClient, shipped: Any, error_of: Any) -> None:
    shipped["channels"][0]["waitMinutes"] = "30"
    shipped["channels"].append({"channel": "push"})
    resp = await client.put("/v1/templates/t", json=shipped)
    assert resp.status == 422
    paths = [d["path"] for d in error_of(await resp.json(), "template_invalid")["details"]]
    assert paths == ["$.channels[0].waitMinutes", "$.channels[1].stopCondition", "$.channels[1].waitMinutes",
                     "$.channels[2].channel"]


async def test_push_cannot_wait_for_viewed(client: TestClient, error_of: Any) -> None:
    body = {"channels": [{"channel": "push", "stopCondition": "viewed", "waitMinutes": 5},
                         {"channel": "email"}], "config": {"sequenceEnabled": True}}
    resp = await client.put("/v1/templates/t", json=body)
    assert resp.status == 422
    detail = error_of(await resp.json())["details"][0]
    assert detail["path"] == "$.channels[0].stopCondition" and "push emits no viewed" in detail["message"]


async def test_a_value_of_the_wrong_type_is_422_naming_its_json_path(client: TestClient, error_of: Any) -> None:
    resp = await client.put("/v1/templates/t", json={"channels": [{"channel": "inapp", "content": "x"}]})
    assert resp.status == 422
    assert error_of(await resp.json(), "invalid")["details"][0]["path"] == "$.channels[0].content"


async def test_unknown_and_missing_fields_are_422_naming_the_field(client: TestClient, error_of: Any) -> None:
    resp = await client.put("/v1/templates/t", json={"channels": [{"channel": "inapp", "colour": 1}]})
    assert resp.status == 422
    assert error_of(await resp.json())["details"][0]["path"] == "$.channels[0].colour"
    resp = await client.put("/v1/templates/t", json={"name": "x"})
    assert resp.status == 422
    assert error_of(await resp.json())["details"][0]["path"] == "$.channels"


async def test_a_bad_template_id_is_422(client: TestClient, shipped: Any, error_of: Any) -> None:
    resp = await client.put("/v1/templates/Not_Lower", json=shipped)
    assert resp.status == 422
    assert error_of(await resp.json())["details"][0]["path"] == "$.id"


async def test_malformed_json_and_non_object_bodies_are_400(client: TestClient, error_of: Any) -> None:
    for raw in (b"{", b"", b"[1, 2]", b'"text"', b"\xff\xfe", b"[" * 5000, b'{"a": 1} trailing', b"1e400"):
        resp = await client.put("/v1/templates/t", data=raw, headers={"Content-Type": "application/json"})
        assert resp.status == 400, raw[:10]
        error_of(await resp.json(), "bad_request")


async def test_a_body_that_is_not_json_by_content_type_is_415(client: TestClient, shipped: Any, error_of: Any) -> None:
    resp = await client.put("/v1/templates/t", data=json.dumps(shipped), headers={"Content-Type": "text/plain"})
    assert resp.status == 415
    error_of(await resp.json(), "unsupported_media_type")
    resp = await client.put("/v1/templates/t", data=json.dumps(shipped).encode())  # no content type at all
    assert resp.status == 415


async def test_json_with_a_charset_is_accepted(client: TestClient, shipped: Any) -> None:
    resp = await client.put("/v1/templates/t", data=json.dumps(shipped),
                            headers={"Content-Type": "application/json; charset=utf-8"})
    assert resp.status == 201


async def test_a_body_over_max_body_bytes_is_413(make_client: Any, settings_of: Any, shipped: Any,
                                                 error_of: Any) -> None:
    client = await make_client(settings_of(server={"max_body_bytes": 1000}))
    big = {**shipped, "name": "x" * 2000}
    resp = await client.put("/v1/templates/t", json=big)
    assert resp.status == 413
    error_of(await resp.json(), "payload_too_large")

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: the limit holds while reading
        yield json.dumps(big).encode()

    resp = await client.put("/v1/templates/t", data=chunks(), headers={"Content-Type": "application/json"})
    assert resp.status == 413
    error_of(await resp.json(), "payload_too_large")


async def test_content_nested_too_deep_is_422_not_a_crash(client: TestClient, error_of: Any) -> None:
    content: dict[str, Any] = {}
    inner = content
    for _ in range(40):
        inner["a"] = {}
        inner = inner["a"]
    resp = await client.put("/v1/templates/t", json={"channels": [{"channel": "inapp", "content": content}]})
    assert resp.status == 422
    assert error_of(await resp.json())["details"][0]["path"].startswith("$.channels[0].content.a")


async def test_template_metrics_of_an_unknown_template_is_404(client: TestClient) -> None:
    assert (await client.get("/v1/templates/nope/metrics")).status == 404
