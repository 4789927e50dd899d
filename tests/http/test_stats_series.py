"""GET /v1/stats/series under the manual clock: counts land in the interval
of the clock time they happened at, advancing the clock moves the series
on, bad query values are 422 naming the parameter, and the series
survives a restart of the server."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, AsyncIterator

import aiohttp
import msgspec
import pytest
from aiohttp.test_utils import TestClient

from cascade.config import Settings
from cascade.domain.timefmt import iso, parse_iso
from cascade.engine import Engine, EngineConfig, ManualClock, MemoryProvider
from cascade.engine.series_sampler import attach_series
from cascade.http import build_app
from cascade.http.routes_stats import SeriesView
from cascade.server import Server

START = parse_iso("2026-11-27T10:00:00.000Z")
SHIPPED = {"channels": [
    {"channel": "inapp", "stopCondition": "viewed", "waitMinutes": 30, "content": {"title": "Shipped"}},
    {"channel": "push", "content": {"title": "Shipped"}},
], "config": {"sequenceEnabled": True}}


@pytest.fixture
async def series_client(aiohttp_client: Any) -> AsyncIterator[TestClient]:
    engine = Engine(ManualClock(START), {ch: MemoryProvider(ch) for ch in ("push", "email", "sms")},
                    EngineConfig(shards=2))
    sampler = attach_series(engine)
    engine.start()
    try:
        yield await aiohttp_client(build_app(engine, Settings(), series=sampler))
    finally:
        engine.stop()


async def series(client: TestClient | aiohttp.ClientSession, query: str = "minutes=60&step=60",
                 base: str = "") -> dict[str, Any]:
    resp = await client.get(f"{base}/v1/stats/series?{query}")
    assert resp.status == 200, await resp.text()
    body: dict[str, Any] = await resp.json()
    msgspec.convert(body, SeriesView)  # the documented shape
    return body


def point(body: dict[str, Any], at: float) -> dict[str, Any]:
    return next(p for p in body["points"] if p["at"] == iso(at))


def quiet(p: dict[str, Any]) -> bool:
    return p["sendsStarted"] == 0 and not any(p["sendsFinished"].values()) and p["timerLateness"]["fired"] == 0 \
        and not any(v for c in p["channels"].values() for v in c.values() if v)


async def start_two_and_view_one(client: TestClient | aiohttp.ClientSession, base: str = "") -> None:
    assert (await client.put(f"{base}/v1/templates/shipped", json=SHIPPED)).status == 201
    ids = []
    for rid in ("u-1", "u-2"):
        recipient = {"id": rid, "pushTokens": [f"token-{rid}"]}
        resp = await client.post(f"{base}/v1/sends", json={"template": "shipped", "recipient": recipient})
        assert resp.status == 202
        ids.append((await resp.json())["steps"][0]["messageId"])
    assert (await client.post(f"{base}/v1/recipients/u-1/inbox/{ids[0]}/viewed")).status == 204


async def advance(client: TestClient | aiohttp.ClientSession, seconds: float, base: str = "") -> None:
    resp = await client.post(f"{base}/v1/admin/clock", json={"advanceSeconds": seconds})
    assert resp.status == 200, await resp.text()


async def test_counts_land_in_the_minute_of_the_clock_time_they_happened_at(series_client: TestClient) -> None:
    await start_two_and_view_one(series_client)
    body = await series(series_client)
    assert len(body["points"]) == 60 and body["step"] == 60
    assert body["to"] == iso(START + 60) and body["from"] == iso(START + 60 - 3600)
    now = body["points"][-1]
    assert now["at"] == iso(START)
    assert now["sendsStarted"] == 2 and now["sendsFinished"]["stopped"] == 1
    assert now["channels"]["inapp"] == {"requested": 2, "delivered": 0, "viewed": 1, "clicked": 0, "engaged": 1,
                                        "failed": 0}
    assert now["channels"]["push"]["viewed"] is None  # push emits no viewed signal
    assert all(quiet(p) for p in body["points"][:-1])

    await advance(series_client, 45 * 60)  # u-2's window ends at 10:30 and its push fires
    body = await series(series_client)
    assert body["to"] == iso(START + 46 * 60)
    assert point(body, START)["sendsStarted"] == 2  # still where it happened
    late = point(body, START + 30 * 60)
    assert late["channels"]["push"]["requested"] == 1 and late["sendsFinished"]["completed"] == 1
    assert late["timerLateness"]["fired"] == 1 and late["timerLateness"]["p50"] is not None
    assert late["timerLateness"]["p50"] <= 0.005  # the manual clock fires a timer at its deadline
    others = [p for p in body["points"] if p["at"] not in (iso(START), iso(START + 30 * 60))]
    assert all(quiet(p) for p in others)


async def test_longer_steps_add_up_the_minutes_they_cover(series_client: TestClient) -> None:
    await start_two_and_view_one(series_client)
    await advance(series_client, 31 * 60)
    body = await series(series_client, "minutes=60&step=1800")
    assert [p["at"] for p in body["points"]] == [iso(START), iso(START + 1800)]  # aligned; the last in progress
    assert body["to"] == iso(START + 3600)
    assert [p["sendsStarted"] for p in body["points"]] == [2, 0]
    assert [p["channels"]["push"]["requested"] for p in body["points"]] == [0, 1]


async def test_the_series_follows_the_clock_a_day_on(series_client: TestClient) -> None:
    await start_two_and_view_one(series_client)
    await advance(series_client, 86400 + 3600)
    body = await series(series_client, "minutes=1440&step=3600")
    assert len(body["points"]) == 24
    assert sum(p["sendsStarted"] for p in body["points"]) == 0  # the sends were more than 24 hours ago


@pytest.mark.parametrize("query, name", [
    ("minutes=0", "minutes"), ("minutes=1441", "minutes"), ("minutes=ten", "minutes"), ("minutes=", "minutes"),
    ("minutes=1.5", "minutes"), ("minutes=-5", "minutes"), ("step=90", "step"), ("step=30", "step"),
    ("step=0", "step"), ("step=86460", "step"), ("step=6e1", "step"), ("step=%EF%BC%96%EF%BC%90", "step"),
])
async def test_bad_query_values_are_422_naming_the_parameter(series_client: TestClient, error_of: Any,
                                                             query: str, name: str) -> None:
    resp = await series_client.get(f"/v1/stats/series?{query}")
    assert resp.status == 422, query
    err = error_of(await resp.json(), "invalid")
    assert err["details"][0]["path"] == name and name in err["message"]


async def test_defaults_are_the_last_hour_by_minute(series_client: TestClient) -> None:
    body = await series(series_client, "")
    assert body["step"] == 60 and len(body["points"]) == 60


async def test_the_series_survives_a_restart(tmp_path: Path) -> None:
    settings = msgspec.convert({"server": {"port": 0}, "storage": {"data_dir": str(tmp_path)},
                                "clock": {"mode": "manual"}}, Settings)
    async with aiohttp.ClientSession() as session:
        async with Server(settings) as server:
            await start_two_and_view_one(session, server.url)
            await advance(session, 31 * 60, server.url)
            before = await series(session, base=server.url)
        assert sum(p["sendsStarted"] for p in before["points"]) == 2
        began = time.monotonic()
        async with Server(settings) as server:
            after = await series(session, base=server.url)
        assert time.monotonic() - began < 30
    assert after == before  # the clock resumed where it was, and every interval's counts came back


class SteppedClock:
    """A scaled-mode clock the test moves by hand (so the sampler's own thread, not an advance, reads)."""

    mode = "scaled"
    rate = 500.0  # the sampler looks every 5 clock seconds: every 10 ms here

    def __init__(self, now: float) -> None:
        self.at = now

    def now(self) -> float:
        return self.at


def test_under_a_running_clock_the_sampler_files_each_minute_as_it_ends() -> None:
    clock = SteppedClock(START + 10)
    engine = Engine(clock, {ch: MemoryProvider(ch) for ch in ("push", "email", "sms")}, EngineConfig(shards=2))
    sampler = attach_series(engine)
    engine.start()
    try:
        engine.put_template("note", {"channels": [{"channel": "inapp", "content": {"title": "hi"}}]}).wait(5)
        engine.send("note", "u-1")[0].wait(5)
        clock.at = START + 70  # the next minute: the thread reads on its own, filing the send under 10:00
        deadline = time.monotonic() + 5.0
        while len(sampler.ring) == 0:
            assert time.monotonic() < deadline, "the sampler did not read as the minute changed"
            time.sleep(0.01)
        engine.send("note", "u-2")[0].wait(5)
        body = sampler.view(5, 60)
    finally:
        engine.stop()
    assert point(body, START)["sendsStarted"] == 1
    assert point(body, START + 60)["sendsStarted"] == 1


@pytest.mark.parametrize("query, name", [("foo=1", "foo"), ("minutes=60&minutes=10", "minutes")])
async def test_an_unknown_or_repeated_parameter_is_a_422_naming_it(series_client: Any, query: str, name: str) -> None:
    resp = await series_client.get(f"/v1/stats/series?{query}")
    assert resp.status == 422
    assert [d["path"] for d in (await resp.json())["error"]["details"]] == [name]
