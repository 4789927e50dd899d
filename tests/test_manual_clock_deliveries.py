"""Under the manual clock, one large advance fires exactly what the same
time in many small advances fires: a step its provider refuses (a 400, or
5xx until the retries run out) escalates at once (rule 5), whether the
clock then moves by an hour in one request or by a minute sixty times.
Through a real server and a real webhook endpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Any, AsyncIterator

import pytest
from aiohttp import web
from serverproc import api, config_text, free_port, running

from cascade.config import load_settings

pytestmark = pytest.mark.slow

TEMPLATE = {"channels": [
    {"channel": "push", "stopCondition": "delivered", "waitMinutes": 30, "content": {"body": "shipped"}},
    {"channel": "sms", "content": {"body": "shipped (sms)"}},
], "config": {"sequenceEnabled": True}}


@pytest.fixture
async def refusing(request: pytest.FixtureRequest) -> AsyncIterator[tuple[str, int]]:
    """A push endpoint that refuses every message with the given status."""
    status: int = request.param

    async def handle(_: web.Request) -> web.Response:
        return web.json_response({"error": "no"}, status=status)

    app = web.Application()
    app.router.add_post("/push", handle)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    yield f"http://127.0.0.1:{port}/push", status
    await runner.cleanup()


async def play(tmp_path: Path, url: str, advances: list[int]) -> tuple[dict[str, Any], dict[str, Any]]:
    """A send of TEMPLATE, the clock moved by `advances`: (send view, push's metrics row)."""
    data = tmp_path / f"data-{len(advances)}"
    config = tmp_path / f"{data.name}.toml"
    config.write_text(config_text(data, free_port(), push_url=url, snapshot_interval_s=3600),
                      encoding="utf-8")
    async with running(load_settings(config, environ={})) as (_, http):
        await api(http, "PUT", "/v1/templates/t", TEMPLATE)
        sent = await api(http, "POST", "/v1/sends", {"template": "t", "recipient": {
            "id": "u", "pushTokens": ["tok"], "phone": "+15550100"}})
        for seconds in advances:
            await api(http, "POST", "/v1/admin/clock", {"advanceSeconds": seconds})
        view = await api(http, "GET", f"/v1/sends/{sent['id']}")
        metrics = await api(http, "GET", "/v1/templates/t/metrics")
    return view, metrics["steps"][0]


def timeline(view: dict[str, Any]) -> list[tuple[str, str | None, bool]]:
    """Each step's status, reason, and whether it fired when the send started."""
    return [(s["status"], s["reason"], s["firedAt"] == view["createdAt"]) for s in view["steps"]]


@pytest.mark.parametrize("refusing", [400, 503], indirect=True, ids=["refused", "retries-exhausted"])
async def test_one_large_advance_fires_what_many_small_ones_fire(tmp_path: Path, refusing: tuple[str, int]) -> None:
    url, _ = refusing
    one_view, one_row = await play(tmp_path, url, [3600])
    many_view, many_row = await play(tmp_path, url, [60] * 60)
    assert timeline(one_view) == timeline(many_view)
    assert one_row == many_row
    # Rule 5: the refused push did not wait its 30 minutes; sms fired at once.
    assert one_view["status"] == "completed"
    assert [s for s, _, _ in timeline(one_view)] == ["failed", "fired"]
    assert timeline(one_view)[1][2]
    assert (one_row["failed"], one_row["escalated"]) == (1, 0)
