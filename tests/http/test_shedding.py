"""Shedding at the front door: new sends are refused first, signals last,
and a refusal never hides an auth answer."""

from __future__ import annotations

from typing import Any

import pytest


@pytest.fixture
def behind(engine: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The server says it is behind (as a lagging loop or a delivery backlog would)."""
    monkeypatch.setattr(engine, "behind", lambda: "the server is 500 ms behind; retry shortly")


async def test_while_behind_a_new_send_is_503_with_retry_after_on_a_connection_kept_open(
        client: Any, put_shipped: Any, behind: None, error_of: Any) -> None:
    await put_shipped()
    resp = await client.post("/v1/sends", json={"template": "order-shipped", "recipient": "u-1"})
    assert resp.status == 503 and resp.headers["Retry-After"] == "1"
    # Kept open: refused clients that all reconnect at once fill the accept queue, where signals then wait.
    assert resp.headers.get("Connection", "").lower() != "close"
    error_of(await resp.json(), "overloaded")


async def test_while_behind_events_are_still_taken(client: Any, put_shipped: Any, engine: Any,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    await put_shipped()
    sent = await (await client.post("/v1/sends", json={"template": "order-shipped", "recipient": "u-1"})).json()
    monkeypatch.setattr(engine, "behind", lambda: "behind")
    resp = await client.post("/v1/events", json={"messageId": f"{sent['id']}.1", "type": "viewed"})
    assert resp.status == 200 and (await resp.json())["accepted"] == 1


async def test_a_refused_key_is_told_so_before_any_shedding(make_client: Any, settings_of: Any, behind: None) -> None:
    client = await make_client(settings_of(auth={"api_keys": {"k-ev": "events"}}))
    resp = await client.post("/v1/sends", json={"template": "t", "recipient": "u-1"})
    assert resp.status == 401
    resp = await client.post("/v1/sends", json={"template": "t", "recipient": "u-1"},
                             headers={"Authorization": "Bearer k-ev"})
    assert resp.status == 403
