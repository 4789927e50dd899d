"""GET /v1/sends: find sends again, newest first, by recipient, template,
campaign and status, a page at a time."""

from __future__ import annotations

from typing import Any

from aiohttp.test_utils import TestClient


async def start(client: TestClient, i: int, template: str = "order-shipped") -> dict[str, Any]:
    resp = await client.post("/v1/sends", json={"template": template, "recipient": f"u-{i % 3}",
                                                "data": {"order": {"id": f"A{i}"}}})
    assert resp.status == 202
    body: dict[str, Any] = await resp.json()
    return body


async def listing(client: TestClient, query: str = "") -> dict[str, Any]:
    resp = await client.get(f"/v1/sends{query}")
    assert resp.status == 200, await resp.text()
    body: dict[str, Any] = await resp.json()
    return body


async def test_sends_are_listed_newest_first_and_paged_with_a_cursor(client: TestClient, put_shipped: Any,
                                                                     engine: Any) -> None:
    await put_shipped()
    made = []
    for i in range(7):
        made.append((await start(client, i))["id"])
        engine.advance(1)  # distinct creation times
    seen: list[str] = []
    query = "?limit=3"
    while True:
        page = await listing(client, query)
        assert len(page["sends"]) <= 3
        seen += [s["id"] for s in page["sends"]]
        if page["next"] is None:
            break
        query = f"?limit=3&before={page['next']}"
    assert seen == made[::-1]


async def test_filters_combine(client: TestClient, put_shipped: Any, engine: Any) -> None:
    await put_shipped()
    await put_shipped("welcome")
    ids = [(await start(client, i, "order-shipped" if i % 2 else "welcome"))["id"] for i in range(6)]
    cancelled = ids[3]
    assert (await client.delete(f"/v1/sends/{cancelled}")).status == 200
    mine = await listing(client, "?recipient=u-0")
    assert {s["recipient"] for s in mine["sends"]} == {"u-0"} and len(mine["sends"]) == 2
    shipped = await listing(client, "?template=order-shipped&recipient=u-1")
    assert [s["id"] for s in shipped["sends"]] == [ids[1]]
    assert [s["id"] for s in (await listing(client, "?status=cancelled"))["sends"]] == [cancelled]
    assert (await listing(client, "?status=cancelled&template=welcome"))["sends"] == []
    assert (await listing(client, "?recipient=nobody"))["sends"] == []


async def test_a_bad_filter_is_422_naming_it(client: TestClient, error_of: Any) -> None:
    for query, path in (("?status=sleeping", "status"), ("?limit=0", "limit"), ("?limit=201", "limit"),
                        ("?before=yesterday", "before"), ("?colour=red", "colour")):
        resp = await client.get(f"/v1/sends{query}")
        assert resp.status == 422, query
        assert error_of(await resp.json())["details"][0]["path"] == path


async def test_paging_sends_made_at_one_instant_lists_each_once(client: TestClient, put_shipped: Any) -> None:
    await put_shipped()
    made = {(await start(client, i))["id"] for i in range(25)}  # a manual clock: all at one instant
    seen: list[str] = []
    query = "?limit=4"
    for _ in range(20):
        page = await listing(client, query)
        seen += [s["id"] for s in page["sends"]]
        if page["next"] is None:
            break
        query = f"?limit=4&before={page['next']}"
    assert sorted(seen) == sorted(made) and len(seen) == len(made)
