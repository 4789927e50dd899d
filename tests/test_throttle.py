"""Throttle (rule 13) through a real server under the manual clock: at most
`limit` sends of a template start per recipient within the window; one
beyond is answered 202 `throttled`, fires nothing, is counted, and the
limit holds across restarts (from the journal alone, and from a snapshot)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp
import pytest
from serverproc import api, inproc_settings, running

pytestmark = pytest.mark.slow

TEMPLATE = {"channels": [
    {"channel": "inapp", "stopCondition": "viewed", "waitMinutes": 5, "content": {"body": "hi"}},
    {"channel": "sms", "content": {"body": "hi"}},
], "config": {"sequenceEnabled": True, "throttle": {"limit": 2, "windowMinutes": 60}}}


async def send(http: aiohttp.ClientSession, rid: str = "u") -> dict[str, Any]:
    body: dict[str, Any] = await api(http, "POST", "/v1/sends", {"template": "t", "recipient": rid}, ok=(202,))
    return body


async def advance(http: aiohttp.ClientSession, seconds: float) -> None:
    await api(http, "POST", "/v1/admin/clock", {"advanceSeconds": seconds})


async def test_a_send_beyond_the_limit_is_throttled_fires_nothing_and_is_counted(tmp_path: Path) -> None:
    async with running(inproc_settings(tmp_path, tmp_path / "data")) as (_, http):
        await api(http, "PUT", "/v1/templates/t", TEMPLATE)
        first, second = await send(http), await send(http)
        assert first["status"] == second["status"] == "active"
        other = await send(http, "someone-else")  # per recipient
        assert other["status"] == "active"
        third = await send(http)
        assert third["status"] == "throttled" and [s["status"] for s in third["steps"]] == ["pending", "pending"]
        assert third["finishedAt"] is not None
        assert [(e["what"], e["detail"]) for e in third["history"]] == [
            ("skipped", {"reason": "throttled", "limit": 2, "windowMinutes": 60})]
        inbox = await api(http, "GET", "/v1/recipients/u/inbox")
        assert len(inbox["messages"]) == 2  # the throttled send put nothing there
        metrics = await api(http, "GET", "/v1/templates/t/metrics")
        assert metrics["sends"]["throttled"] == 1 and metrics["sends"]["active"] == 3
        assert metrics["steps"][0]["requested"] == 3
        async with http.get("/metrics") as r:
            assert 'cascade_sends_finished_total{outcome="throttled",template="t"} 1.0' in await r.text()
        listed = await api(http, "GET", "/v1/sends?status=throttled")
        assert [s["id"] for s in listed["sends"]] == [third["id"]]
        # The window slides: an hour after the first two, a send starts again.
        await advance(http, 3600)
        assert (await send(http))["status"] == "active"


@pytest.mark.parametrize("snapshot", [False, True], ids=["journal", "snapshot"])
async def test_the_limit_holds_across_a_restart(tmp_path: Path, snapshot: bool) -> None:
    settings = inproc_settings(tmp_path, tmp_path / "data")
    async with running(settings) as (_, http):
        await api(http, "PUT", "/v1/templates/t", TEMPLATE)
        await send(http)
        await advance(http, 1800)
        await send(http)
        if snapshot:
            await api(http, "POST", "/v1/admin/snapshots")
    async with running(settings) as (_, http):
        assert (await send(http))["status"] == "throttled"
        await advance(http, 1800)  # the first send's hour is over, the second's is not
        assert (await send(http))["status"] == "active"
        assert (await send(http))["status"] == "throttled"
    async with running(settings) as (_, http):
        metrics = await api(http, "GET", "/v1/templates/t/metrics")
        assert (metrics["sends"]["started"], metrics["sends"]["throttled"]) == (5, 2)


async def test_throttle_values_are_validated_with_paths(tmp_path: Path) -> None:
    async with running(inproc_settings(tmp_path, tmp_path / "data")) as (_, http):
        bad = {**TEMPLATE, "config": {"sequenceEnabled": True, "throttle": {"limit": 0, "windowMinutes": 20000}}}
        body = await api(http, "PUT", "/v1/templates/t", bad, ok=(422,))
        assert {d["path"] for d in body["error"]["details"]} == {"$.config.throttle.limit",
                                                                 "$.config.throttle.windowMinutes"}
