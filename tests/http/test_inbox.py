"""The in-app inbox over HTTP: newest first, cursor pagination, unseen
count, and marking messages viewed or clicked."""

from __future__ import annotations

from typing import Any

from aiohttp.test_utils import TestClient

NOTE = {"channels": [{"channel": "inapp", "content": {"title": "Note {{n}}"}}]}


async def five_notes(client: TestClient, rid: str = "u-1") -> list[str]:
    assert (await client.put("/v1/templates/note", json=NOTE)).status == 201
    ids = []
    for n in range(5):
        resp = await client.post("/v1/sends", json={"template": "note", "recipient": rid, "data": {"n": n}})
        ids.append((await resp.json())["steps"][0]["messageId"])
    return ids


async def test_pages_are_newest_first_and_follow_the_cursor(client: TestClient) -> None:
    ids = await five_notes(client)
    seen: list[str] = []
    url = "/v1/recipients/u-1/inbox?limit=2"
    pages = []
    while True:
        page = await (await client.get(url)).json()
        pages.append(len(page["messages"]))
        seen += [m["messageId"] for m in page["messages"]]
        if page["next"] is None:
            break
        url = f"/v1/recipients/u-1/inbox?limit=2&before={page['next']}"
    assert pages == [2, 2, 1]
    assert seen == ids[::-1]


async def test_messages_carry_rendered_content_and_the_unseen_count(client: TestClient) -> None:
    ids = await five_notes(client)
    page = await (await client.get("/v1/recipients/u-1/inbox")).json()
    assert page["unseen"] == 5 and page["next"] is None
    first = page["messages"][0]
    assert first["content"] == {"title": "Note 4"} and first["template"] == "note"
    assert set(first) == {"messageId", "sendId", "template", "content", "createdAt", "deliveredAt", "viewedAt",
                          "clickedAt"}
    resp = await client.post(f"/v1/recipients/u-1/inbox/{ids[4]}/viewed")
    assert resp.status == 204 and await resp.read() == b""
    page = await (await client.get("/v1/recipients/u-1/inbox")).json()
    assert page["unseen"] == 4
    resp = await client.post(f"/v1/recipients/u-1/inbox/{ids[3]}/clicked")
    assert resp.status == 204
    page = await (await client.get("/v1/recipients/u-1/inbox")).json()
    assert page["messages"][0]["viewedAt"] is not None and page["messages"][1]["clickedAt"] is not None


async def test_an_empty_inbox_is_an_empty_page(client: TestClient) -> None:
    page = await (await client.get("/v1/recipients/nobody/inbox")).json()
    assert page == {"messages": [], "next": None, "unseen": 0}


async def test_limit_must_be_between_1_and_200(client: TestClient, error_of: Any) -> None:
    for bad in ("0", "201", "-1", "ten", "1.5", ""):
        resp = await client.get(f"/v1/recipients/u-1/inbox?limit={bad}")
        assert resp.status == 422, bad
        assert error_of(await resp.json(), "invalid")["details"][0]["path"] == "limit"
    assert (await client.get("/v1/recipients/u-1/inbox?limit=200")).status == 200


async def test_an_unknown_cursor_is_422(client: TestClient) -> None:
    await five_notes(client)
    resp = await client.get("/v1/recipients/u-1/inbox?before=snd_000000000000001.1")
    assert resp.status == 422


async def test_marking_a_message_of_another_recipient_is_404(client: TestClient, error_of: Any) -> None:
    ids = await five_notes(client, "u-1")
    resp = await client.post(f"/v1/recipients/u-2/inbox/{ids[0]}/viewed")
    assert resp.status == 404
    error_of(await resp.json(), "not_found")
    assert (await client.post("/v1/recipients/u-1/inbox/garbage/clicked")).status == 404


async def test_marking_a_message_by_another_spelling_of_its_id_is_404(client: TestClient, error_of: Any) -> None:
    ids = await five_notes(client)
    for mid in ids:
        hexpart, step = mid[4:].split(".")
        if hexpart != hexpart.upper():
            break
    else:
        raise AssertionError("no message id with a hex letter among five")
    for other in (f"{mid[:-1]}01", f"{mid[:-1]}\uff11", f"snd_{hexpart.upper()}.{step}"):
        for mark in ("viewed", "clicked"):
            resp = await client.post(f"/v1/recipients/u-1/inbox/{other}/{mark}")
            assert resp.status == 404, (other, mark)
            error_of(await resp.json(), "not_found")
    page = await (await client.get("/v1/recipients/u-1/inbox")).json()
    assert page["unseen"] == 5
    assert (await client.post(f"/v1/recipients/u-1/inbox/{mid}/viewed")).status == 204
