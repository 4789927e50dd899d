"""Administration over HTTP: the manual clock (escalation in milliseconds)
and snapshot endpoints."""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp.test_utils import TestClient

from cascade.engine import Engine, EngineConfig, MemoryProvider, RealClock


async def test_get_clock_answers_now_and_mode(client: TestClient) -> None:
    resp = await client.get("/v1/admin/clock")
    assert await resp.json() == {"now": "2026-11-27T10:00:00.000Z", "mode": "manual"}


async def test_advancing_the_manual_clock_escalates_to_push(
        client: TestClient, put_shipped: Any, providers: dict[str, MemoryProvider]) -> None:
    await put_shipped()
    await client.put("/v1/recipients/u-42", json={"pushTokens": ["tok"]})
    send = await (await client.post("/v1/sends", json={"template": "order-shipped", "recipient": "u-42",
                                                       "data": {"order": {"id": "A1"}}})).json()
    resp = await client.post("/v1/admin/clock", json={"advanceSeconds": 29 * 60})
    assert await resp.json() == {"now": "2026-11-27T10:29:00.000Z", "mode": "manual"}
    assert providers["push"].messages == []
    resp = await client.post("/v1/admin/clock", json={"advanceSeconds": 60})
    assert resp.status == 200
    [pushed] = providers["push"].messages
    assert pushed.message_id == send["id"] + ".2"
    view = await (await client.get(f"/v1/sends/{send['id']}")).json()
    assert view["status"] == "completed" and view["steps"][1]["firedAt"] == "2026-11-27T10:30:00.000Z"


async def test_time_cannot_go_backwards(client: TestClient, error_of: Any) -> None:
    resp = await client.post("/v1/admin/clock", json={"advanceSeconds": -1})
    assert resp.status == 422
    assert error_of(await resp.json())["details"][0]["path"] == "$.advanceSeconds"
    resp = await client.post("/v1/admin/clock", json={"advanceSeconds": "soon"})
    assert resp.status == 422


async def test_advancing_a_real_clock_is_409_naming_the_setting(make_client: Any, error_of: Any) -> None:
    real = Engine(RealClock(), config=EngineConfig(shards=1)).start()
    try:
        client = await make_client(on=real)
        resp = await client.post("/v1/admin/clock", json={"advanceSeconds": 60})
        assert resp.status == 409
        assert 'clock.mode = "manual"' in error_of(await resp.json(), "clock_not_manual")["message"]
        assert (await (await client.get("/v1/admin/clock")).json())["mode"] == "real"
    finally:
        real.stop()


async def test_snapshots_without_durable_storage_are_503(client: TestClient, error_of: Any) -> None:
    for method in ("POST", "GET"):
        resp = await client.request(method, "/v1/admin/snapshots")
        assert resp.status == 503
        error_of(await resp.json(), "snapshots_disabled")


class Hooks:
    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.entered = asyncio.Event()
        self.hold = False

    async def snapshot(self) -> dict[str, Any]:
        if self.hold:
            self.entered.set()
            await self.release.wait()
        return {"file": "snapshot-1.msgpack", "sends": 0, "bytes": 10, "seconds": 0.01}

    async def list_snapshots(self) -> list[dict[str, Any]]:
        return [{"file": "snapshot-1.msgpack", "bytes": 10}]


async def test_snapshot_endpoints_call_the_admin_hooks(make_client: Any) -> None:
    client = await make_client(admin=Hooks())
    resp = await client.post("/v1/admin/snapshots")
    assert resp.status == 200 and (await resp.json())["file"] == "snapshot-1.msgpack"
    listed = await (await client.get("/v1/admin/snapshots")).json()
    assert listed == {"snapshots": [{"file": "snapshot-1.msgpack", "bytes": 10}]}
