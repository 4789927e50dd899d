"""POST/GET/DELETE /v1/campaigns through the aiohttp test client: JSON and
streamed CSV uploads, their edge cases, the lifecycle under the manual clock
(`POST /v1/admin/clock {"advanceSeconds": 0}` lets fan-outs finish), auth
scopes and the documented shapes."""

from __future__ import annotations

from typing import Any, AsyncIterator

import msgspec
import pytest
from aiohttp.test_utils import TestClient

from cascade.engine import Engine, MemoryProvider
from cascade.http import openapi

CSV = {"Content-Type": "text/csv"}


async def advance(client: TestClient, seconds: float = 0) -> None:
    resp = await client.post("/v1/admin/clock", json={"advanceSeconds": seconds})
    assert resp.status == 200, await resp.text()


async def post_csv(client: TestClient, body: str | bytes, status: int = 201, **query: str) -> dict[str, Any]:
    query.setdefault("template", "order-shipped")
    resp = await client.post("/v1/campaigns", params=query, data=body.encode() if isinstance(body, str) else body,
                             headers=CSV)
    answer: dict[str, Any] = await resp.json()
    assert resp.status == status, answer
    return answer


async def post_json(client: TestClient, body: dict[str, Any], status: int = 201) -> dict[str, Any]:
    resp = await client.post("/v1/campaigns", json=body)
    answer: dict[str, Any] = await resp.json()
    assert resp.status == status, answer
    return answer


async def get(client: TestClient, path: str, status: int = 200) -> Any:
    resp = await client.get(path)
    assert resp.status == status, await resp.text()
    return await resp.json()


async def inbox_body(client: TestClient, rid: str) -> str:
    page = await get(client, f"/v1/recipients/{rid}/inbox")
    assert len(page["messages"]) == 1, page
    return page["messages"][0]["content"]["body"]  # type: ignore[no-any-return]


def conforms(body: Any, view: Any) -> None:
    msgspec.convert(body, view)


def step(campaign: dict[str, Any], number: int) -> dict[str, Any]:
    return next(s for s in campaign["metrics"]["steps"] if s["step"] == number)  # type: ignore[no-any-return]


@pytest.fixture(autouse=True)
async def template(put_shipped: Any) -> None:
    await put_shipped()


# -- JSON and CSV end to end ----------------------------------------------------------------------

async def test_a_json_campaign_runs_each_recipients_sequence_on_its_own(
        client: TestClient, providers: dict[str, MemoryProvider]) -> None:
    recipients = ["u1", {"id": "u2", "pushTokens": ["t2"]}, {"id": "u3", "pushTokens": ["t3"]}, "u4"]
    created = await post_json(client, {"template": "order-shipped", "recipients": recipients, "name": "launch",
                                       "data": {"order": {"id": "A1"}}})
    conforms(created, openapi.CampaignCreated)
    assert created["id"].startswith("cmp_") and created["status"] == "running"
    assert created["recipients"] == 4 and created["errors"] == [] and created["rejectedRows"] == 0
    await advance(client)
    campaign = await get(client, f"/v1/campaigns/{created['id']}")
    conforms(campaign, openapi.CampaignView)
    assert campaign["status"] == "completed" and campaign["sendsStarted"] == 4 and campaign["name"] == "launch"
    assert await inbox_body(client, "u2") == "Order A1 is on its way"
    for rid in ("u1", "u2"):  # these two engage: their chains stop on step 1
        message = (await get(client, f"/v1/recipients/{rid}/inbox"))["messages"][0]
        resp = await client.post(f"/v1/recipients/{rid}/inbox/{message['messageId']}/viewed")
        assert resp.status == 204
    await advance(client, 30 * 60)
    assert [m.recipient["id"] for m in providers["push"].messages] == ["u3"]  # u4 has no push token
    campaign = await get(client, f"/v1/campaigns/{created['id']}")
    assert step(campaign, 1)["stopped"] == 2 and step(campaign, 1)["escalated"] == 2
    assert step(campaign, 2)["requested"] == 1 and step(campaign, 2)["skipped"] == 1
    assert campaign["metrics"]["sends"]["stopped"] == 2 and campaign["metrics"]["sends"]["active"] == 0


async def test_a_csv_campaign_nests_dotted_columns_into_each_rows_data(
        client: TestClient, providers: dict[str, MemoryProvider]) -> None:
    created = await post_csv(client, "recipient,push_token,order.id,order.total\nu1,tok1,A1,10\nu2,tok2,B2,20\n",
                             name="csv")
    assert created["recipients"] == 2 and created["name"] == "csv"
    await advance(client)
    assert await inbox_body(client, "u1") == "Order A1 is on its way"
    assert await inbox_body(client, "u2") == "Order B2 is on its way"
    await advance(client, 30 * 60)
    assert sorted((m.recipient["id"], m.recipient["pushTokens"], m.content["body"])
                  for m in providers["push"].messages) == [("u1", ["tok1"], "Order A1"), ("u2", ["tok2"], "Order B2")]


async def test_address_columns_upsert_the_recipients(client: TestClient) -> None:
    await post_csv(client, "recipient,email,phone,push_token\nu1, u1@example.com ,+15551234,tok1\nu2,,,\n")
    await advance(client)
    assert await get(client, "/v1/recipients/u1") == {"id": "u1", "email": "u1@example.com", "phone": "+15551234",
                                                      "pushTokens": ["tok1"], "preferences": {}}
    assert await get(client, "/v1/recipients/u2") == {"id": "u2", "preferences": {}}


# -- CSV edge cases ------------------------------------------------------------------------------

async def test_quoted_fields_bom_crlf_and_empty_lines(client: TestClient) -> None:
    body = ("\ufeffrecipient,order.id\r\n"
            "u1,\"A1, first\"\r\n"
            "\r\n"
            "u2,\"B2\r\nsecond line\"\r\n"
            ",\r\n"
            "\"u3\",\"say \"\"hi\"\"\"\r\n"
            "\n")
    created = await post_csv(client, body)
    assert created["recipients"] == 3 and created["errors"] == [], created
    await advance(client)
    assert await inbox_body(client, "u1") == "Order A1, first is on its way"
    assert await inbox_body(client, "u2") == "Order B2\r\nsecond line is on its way"
    assert await inbox_body(client, "u3") == 'Order say "hi" is on its way'


async def test_bad_rows_are_reported_with_their_row_numbers_and_skipped(client: TestClient) -> None:
    body = ("recipient,email,order.id\n"
            "u1,u1@example.com,A1\n"      # row 1
            ",nobody@example.com,A2\n"    # row 2: no recipient
            "u3,u3@example.com\n"         # row 3: two fields, the header has three
            "u4,not-an-email,A4\n"        # row 4
            "\n"                          # row 5: blank, skipped silently
            "u1,again@example.com,A6\n"   # row 6: repeats u1
            "has space,,A7\n"             # row 7
            "u8,,A8\n")                   # row 8
    created = await post_csv(client, body)
    assert created["recipients"] == 2 and created["rejectedRows"] == 5
    assert [e["row"] for e in created["errors"]] == [2, 3, 4, 6, 7]
    messages = [e["message"] for e in created["errors"]]
    assert "no recipient" in messages[0]
    assert "2 fields" in messages[1] and "3" in messages[1]
    assert "not-an-email" in messages[2]
    assert "duplicate recipient 'u1'" in messages[3] and "first row wins" in messages[3]
    assert "spaces" in messages[4]
    await advance(client)
    assert await get(client, "/v1/recipients/u1") == {"id": "u1", "email": "u1@example.com", "preferences": {}}
    assert (await get(client, f"/v1/campaigns/{created['id']}"))["rejectedRows"] == 5


async def test_the_error_list_is_capped_but_every_bad_row_is_counted(client: TestClient) -> None:
    body = "recipient,email\n" + "x,bad\n" * 1500 + "u1,u1@example.com\n"
    created = await post_csv(client, body)
    assert created["recipients"] == 1 and created["rejectedRows"] == 1500 and len(created["errors"]) == 1000


@pytest.mark.parametrize("header, problem", [
    ("email,order.id", "no recipient column"),
    ("recipient,order,order.id", "would nest inside column 'order'"),
    ("recipient,name,name", "appears twice"),
    ("recipient,,x", "has no name"),
    ("recipient,order..id", "empty part"),
])
async def test_a_bad_header_is_422_naming_the_problem(client: TestClient, error_of: Any, header: str,
                                                       problem: str) -> None:
    err = error_of(await post_csv(client, header + "\nu1,a,b\n", status=422), "invalid")
    assert problem in err["message"], err


async def test_a_csv_without_one_good_row_is_422(client: TestClient, error_of: Any) -> None:
    error_of(await post_csv(client, "", status=422), "invalid")
    err = error_of(await post_csv(client, "recipient,email\nu1,bad\n,x@example.com\n", status=422), "invalid")
    assert [d["path"] for d in err["details"]] == ["row 1", "row 2"]


async def test_a_csv_that_is_not_utf8_is_400(client: TestClient, error_of: Any) -> None:
    error_of(await post_csv(client, b"recipient,name\nu1,\xff\xfe\n", status=400), "bad_request")


# -- limits and content types --------------------------------------------------------------------

async def test_a_csv_over_max_csv_bytes_is_413_declared_or_streamed(make_client: Any, settings_of: Any,
                                                                   error_of: Any) -> None:
    client = await make_client(settings_of(server={"max_csv_bytes": 1000, "max_body_bytes": 100}))
    body = "recipient\n" + "".join(f"user-{i}\n" for i in range(300))  # ~2.7 KB
    error_of(await post_csv(client, body, status=413), "payload_too_large")

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: caught while streaming
        for i in range(0, len(body), 200):
            yield body[i:i + 200].encode()

    resp = await client.post("/v1/campaigns", params={"template": "order-shipped"}, data=chunks(), headers=CSV)
    assert resp.status == 413
    error_of(await resp.json(), "payload_too_large")
    small = "recipient\n" + "".join(f"u{i}\n" for i in range(50))  # over max_body_bytes: CSV is not bound by it
    assert (await post_csv(client, small))["recipients"] == 50


async def test_other_content_types_are_415(client: TestClient, error_of: Any) -> None:
    resp = await client.post("/v1/campaigns", data=b"recipient\nu1\n", headers={"Content-Type": "text/plain"})
    assert resp.status == 415
    error_of(await resp.json(), "unsupported_media_type")
    resp = await client.post("/v1/campaigns", data=b"recipient\nu1\n", headers={"Content-Type": "text/csv; charset=latin-1"})
    assert resp.status == 415


async def test_unknown_template_missing_template_and_bad_times(client: TestClient, error_of: Any) -> None:
    error_of(await post_csv(client, "recipient\nu1\n", status=404, template="nope"), "not_found")
    error_of(await post_json(client, {"template": "nope", "recipients": ["u1"]}, status=404), "not_found")
    resp = await client.post("/v1/campaigns", data=b"recipient\nu1\n", headers=CSV)
    assert resp.status == 422
    err = error_of(await post_csv(client, "recipient\nu1\n", status=422, scheduledAt="tomorrow"), "invalid")
    assert err["details"][0]["path"] == "scheduledAt"
    err = error_of(await post_json(client, {"template": "order-shipped", "recipients": ["u1"],
                                            "scheduledAt": "2026-11-27T10:00:00"}, status=422), "invalid")
    assert err["details"][0]["path"] == "$.scheduledAt"


async def test_json_recipients_are_validated_row_by_row(client: TestClient) -> None:
    created = await post_json(client, {"template": "order-shipped",
                                       "recipients": ["u1", "bad id", {"id": "u3", "email": "nope"}, "u1"]})
    assert created["recipients"] == 1 and [e["row"] for e in created["errors"]] == [2, 3, 4]


# -- lifecycle ------------------------------------------------------------------------------------

async def test_a_scheduled_campaign_starts_when_the_manual_clock_reaches_it(client: TestClient) -> None:
    created = await post_csv(client, "recipient\nu1\nu2\n", scheduledAt="2026-11-27T11:00:00.000Z")
    assert created["status"] == "scheduled" and created["scheduledAt"] == "2026-11-27T11:00:00.000Z"
    await advance(client, 1800)
    campaign = await get(client, f"/v1/campaigns/{created['id']}")
    assert campaign["status"] == "scheduled" and campaign["sendsStarted"] == 0
    await advance(client, 1800)
    campaign = await get(client, f"/v1/campaigns/{created['id']}")
    assert campaign["status"] == "completed" and campaign["sendsStarted"] == 2


async def test_delete_cancels_once(client: TestClient, error_of: Any) -> None:
    created = await post_json(client, {"template": "order-shipped", "recipients": ["u1"],
                                       "scheduledAt": "2026-11-28T10:00:00Z"})
    resp = await client.delete(f"/v1/campaigns/{created['id']}")
    assert resp.status == 200
    body = await resp.json()
    conforms(body, openapi.CampaignView)
    assert body["status"] == "cancelled" and body["finishedAt"] is not None
    resp = await client.delete(f"/v1/campaigns/{created['id']}")
    assert resp.status == 409
    error_of(await resp.json(), "already_finished")
    await advance(client, 86400)
    assert (await get(client, f"/v1/campaigns/{created['id']}"))["sendsStarted"] == 0
    error_of(await get(client, "/v1/campaigns/cmp_nope", status=404), "not_found")
    assert (await client.delete("/v1/campaigns/cmp_nope")).status == 404


async def test_deleting_a_started_campaign_cancels_its_active_sends(client: TestClient) -> None:
    created = await post_csv(client, "recipient\nu1\nu2\nu3\n")
    await advance(client)
    body = await (await client.delete(f"/v1/campaigns/{created['id']}")).json()
    assert body["metrics"]["sends"]["cancelled"] == 3 and body["metrics"]["sends"]["active"] == 0
    page = await get(client, "/v1/recipients/u1/inbox")
    send = await get(client, f"/v1/sends/{page['messages'][0]['sendId']}")
    assert send["status"] == "cancelled" and send["campaign"] == created["id"]


async def test_the_list_is_newest_first_filters_by_status_and_pages(client: TestClient) -> None:
    ids = []
    for k in range(3):
        ids.append((await post_json(client, {"template": "order-shipped", "recipients": [f"u{k}"],
                                             "scheduledAt": "2026-11-28T10:00:00Z"}))["id"])
        await advance(client, 1)
    listed = await get(client, "/v1/campaigns")
    conforms(listed, openapi.CampaignList)
    assert [c["id"] for c in listed["campaigns"]] == ids[::-1] and listed["next"] is None
    await client.delete(f"/v1/campaigns/{ids[1]}")
    assert [c["id"] for c in (await get(client, "/v1/campaigns?status=cancelled"))["campaigns"]] == [ids[1]]
    first = await get(client, "/v1/campaigns?limit=2")
    assert [c["id"] for c in first["campaigns"]] == [ids[2], ids[1]] and first["next"] == ids[1]
    rest = await get(client, f"/v1/campaigns?limit=2&before={first['next']}")
    assert [c["id"] for c in rest["campaigns"]] == [ids[0]] and rest["next"] is None
    for bad in ("?status=nope", "?limit=0", "?limit=x", "?before=cmp_nope"):
        assert (await client.get("/v1/campaigns" + bad)).status == 422


async def test_query_parameter_errors_name_the_parameter_bare_as_the_api_docs_say(client: TestClient,
                                                                                    error_of: Any) -> None:
    """api.md: "`$` is the body ...; query parameters are named bare, e.g. `limit`"."""
    await client.put("/v1/templates/order-shipped", json={"channels": [{"channel": "inapp"}]})
    upload = {"data": b"recipient\nu1\n", "headers": CSV}
    bad: list[tuple[str, str, dict[str, Any], str]] = [
        ("POST", "/v1/campaigns", upload, "template"),
        ("POST", "/v1/campaigns?template=order-shipped&scheduledAt=tomorrow", upload, "scheduledAt"),
        ("POST", f"/v1/campaigns?template=order-shipped&name={'n' * 201}", upload, "name"),
        ("GET", "/v1/campaigns?status=nope", {}, "status"),
        ("GET", "/v1/campaigns?limit=0", {}, "limit"),
        ("GET", "/v1/campaigns?before=cmp_nope", {}, "before"),
        ("GET", "/v1/recipients/u1/inbox?limit=201", {}, "limit"),
        ("GET", "/v1/recipients/u1/inbox?before=snd_000000000000001.1", {}, "before")]
    for method, url, kwargs, param in bad:
        resp = await client.request(method, url, **kwargs)
        assert resp.status == 422, url
        assert [d["path"] for d in error_of(await resp.json(), "invalid")["details"]] == [param]


# -- auth and documentation ----------------------------------------------------------------------

async def test_campaigns_need_send_or_admin_to_write_and_read_to_read(make_client: Any, settings_of: Any,
                                                                     engine: Engine) -> None:
    engine.put_template("order-shipped", {"channels": [{"channel": "inapp"}]})
    keys = {"k-admin": "admin", "k-send": "send", "k-read": "read", "k-events": "events"}
    client = await make_client(settings_of(auth={"api_keys": keys}))

    def auth(key: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {key}"}

    body = {"template": "order-shipped", "recipients": ["u1"]}
    assert (await client.post("/v1/campaigns", json=body)).status == 401
    for key, status in (("k-read", 403), ("k-events", 403), ("k-send", 201), ("k-admin", 201)):
        assert (await client.post("/v1/campaigns", json=body, headers=auth(key))).status == status, key
    assert (await client.get("/v1/campaigns", headers=auth("k-read"))).status == 200
    assert (await client.get("/v1/campaigns", headers=auth("k-events"))).status == 403
    assert (await client.delete("/v1/campaigns/cmp_x", headers=auth("k-read"))).status == 403


async def test_the_openapi_document_describes_campaigns(client: TestClient) -> None:
    doc = await get(client, "/openapi.json")
    post = doc["paths"]["/v1/campaigns"]["post"]
    assert set(post["requestBody"]["content"]) == {"application/json", "text/csv"}
    assert {p["name"] for p in post["parameters"]} == {"template", "scheduledAt", "name"}
    assert "201" in post["responses"] and "413" in post["responses"] and "415" in post["responses"]
    assert set(doc["paths"]["/v1/campaigns/{id}"]) == {"get", "delete"}
    for name in ("CampaignBody", "CampaignCreated", "CampaignView", "CampaignList"):
        assert name in doc["components"]["schemas"]
