"""Auth over HTTP: what each API key scope may call, missing and unknown
keys, and recipient tokens that open one recipient's inbox only."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from cascade.http import recipient_token

KEYS = {"k-admin": "admin", "k-send": "send", "k-events": "events", "k-read": "read"}
SECRET = "change-me"
TEMPLATE = {"channels": [{"channel": "inapp", "content": {}}]}

# (method, path, json body, the scopes allowed)
EVENTS, SEND, READ = {"admin", "send", "events"}, {"admin", "send"}, {"admin", "send", "read"}
TABLE: list[tuple[str, str, Any, set[str]]] = [
    ("GET", "/v1/templates", None, READ),
    ("GET", "/v1/templates/t", None, READ),
    ("PUT", "/v1/templates/t", TEMPLATE, {"admin"}),
    ("DELETE", "/v1/templates/gone", None, {"admin"}),
    ("GET", "/v1/templates/t/metrics", None, READ),
    ("PUT", "/v1/recipients/u-1", {"email": "u@example.com"}, SEND),
    ("GET", "/v1/recipients/u-1", None, READ),
    ("POST", "/v1/sends", {"template": "t", "recipient": "u-1"}, SEND),
    ("GET", "/v1/sends/snd_000000000000001", None, READ),
    ("DELETE", "/v1/sends/snd_000000000000001", None, SEND),
    ("POST", "/v1/events", {"messageId": "snd_000000000000001.1", "type": "viewed"}, EVENTS),
    ("GET", "/v1/recipients/u-1/inbox", None, READ),
    ("POST", "/v1/recipients/u-1/inbox/snd_000000000000001.1/viewed", None, SEND),
    ("POST", "/v1/recipients/u-1/inbox/snd_000000000000001.1/clicked", None, SEND),
    ("GET", "/v1/admin/clock", None, {"admin"}),
    ("POST", "/v1/admin/clock", {"advanceSeconds": 0}, {"admin"}),
    ("GET", "/v1/admin/snapshots", None, {"admin"}),
]
PUBLIC = ["/healthz", "/readyz", "/metrics", "/openapi.json"]


@pytest.fixture
async def secured(make_client: Any, settings_of: Any) -> TestClient:
    client: TestClient = await make_client(settings_of(auth={"api_keys": KEYS, "inbox_secret": SECRET}))
    resp = await client.put("/v1/templates/t", json=TEMPLATE, headers={"Authorization": "Bearer k-admin"})
    assert resp.status == 201
    return client


@pytest.mark.parametrize("method,path,body,allowed", TABLE, ids=[f"{m} {p}" for m, p, _, _ in TABLE])
async def test_each_scope_may_call_exactly_what_api_md_grants(secured: TestClient, error_of: Any, method: str,
                                                              path: str, body: Any, allowed: set[str]) -> None:
    for key, scope in KEYS.items():
        resp = await secured.request(method, path, json=body, headers={"Authorization": f"Bearer {key}"})
        if scope in allowed:
            assert resp.status not in (401, 403), (scope, resp.status, await resp.text())
        else:
            assert resp.status == 403, (scope, resp.status)
            assert scope in error_of(await resp.json(), "forbidden")["message"]


@pytest.mark.parametrize("method,path,body,allowed", TABLE, ids=[f"{m} {p}" for m, p, _, _ in TABLE])
async def test_a_missing_or_unknown_key_is_401_with_a_bearer_challenge(
        secured: TestClient, error_of: Any, method: str, path: str, body: Any, allowed: set[str]) -> None:
    for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": "Basic azphZG1pbg=="},
                    {"Authorization": "Bearer"}, {"Authorization": "Bearer k-admin-but-longer"}):
        resp = await secured.request(method, path, json=body, headers=headers)
        assert resp.status == 401, headers
        assert resp.headers["WWW-Authenticate"].startswith("Bearer")
        error_of(await resp.json(), "unauthorized")


async def test_operational_endpoints_need_no_key(secured: TestClient) -> None:
    for path in PUBLIC:
        assert (await secured.get(path)).status == 200, path


async def test_a_recipient_token_opens_that_recipients_inbox(secured: TestClient) -> None:
    token = {"X-Recipient-Token": recipient_token(SECRET, "u-1")}
    send = await secured.post("/v1/sends", json={"template": "t", "recipient": "u-1"},
                              headers={"Authorization": "Bearer k-send"})
    message_id = (await send.json())["steps"][0]["messageId"]
    page = await secured.get("/v1/recipients/u-1/inbox", headers=token)
    assert page.status == 200 and len((await page.json())["messages"]) == 1
    resp = await secured.post(f"/v1/recipients/u-1/inbox/{message_id}/viewed", headers=token)
    assert resp.status == 204
    upper = {"X-Recipient-Token": token["X-Recipient-Token"].upper()}  # hex is case-insensitive
    assert (await secured.get("/v1/recipients/u-1/inbox", headers=upper)).status == 200


async def test_a_recipient_token_does_not_open_another_recipients_inbox(secured: TestClient,
                                                                        error_of: Any) -> None:
    token = {"X-Recipient-Token": recipient_token(SECRET, "u-1")}
    resp = await secured.get("/v1/recipients/u-2/inbox", headers=token)
    assert resp.status == 403
    error_of(await resp.json(), "forbidden")
    resp = await secured.post("/v1/recipients/u-2/inbox/snd_000000000000001.1/clicked", headers=token)
    assert resp.status == 403
    for bad in ("", "zz", "é" * 64, recipient_token("other-secret", "u-1")):
        resp = await secured.get("/v1/recipients/u-1/inbox", headers={"X-Recipient-Token": bad})
        assert resp.status == 403, bad


async def test_a_recipient_token_opens_nothing_but_the_inbox(secured: TestClient) -> None:
    token = {"X-Recipient-Token": recipient_token(SECRET, "u-1")}
    assert (await secured.get("/v1/recipients/u-1", headers=token)).status == 401
    assert (await secured.get("/v1/templates", headers=token)).status == 401


async def test_without_configured_keys_nothing_is_checked(client: TestClient) -> None:
    assert (await client.get("/v1/admin/clock")).status == 200
    assert (await client.get("/v1/templates", headers={"Authorization": "Bearer whatever"})).status == 200
