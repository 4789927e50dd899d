"""The inbox stream over HTTP: Server-Sent Events pushed as the inbox
changes, the same auth as the inbox (and `?token=`), the open-stream bound,
pings, and streams that end with their client or the server."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
from aiohttp.test_utils import TestClient

from cascade.config import Settings
from cascade.http.auth import recipient_token
from cascade.server import Server

NOTE = {"channels": [{"channel": "inapp", "content": {"title": "Note {{n}}"}}]}
SECRET = "s3cret"
KEYS = {"k-admin": "admin"}


async def read_event(resp: aiohttp.ClientResponse, deadline: float) -> tuple[str, Any]:
    """The next event (name, data) or comment ("comment", text) of a stream, by `deadline` (monotonic)."""
    name, data = None, None
    while True:
        line = await asyncio.wait_for(resp.content.readline(), max(0.0, deadline - time.monotonic()))
        if not line:
            raise EOFError("the stream ended")
        text = line.decode().rstrip("\n")
        if text.startswith(":"):
            return "comment", text[1:].strip()
        if text.startswith("event: "):
            name = text[len("event: "):]
        elif text.startswith("data: "):
            data = json.loads(text[len("data: "):])
        elif text == "" and name is not None:
            return name, data


async def wait_for_event(resp: aiohttp.ClientResponse, want: str, within: float = 1.0) -> Any:
    """The data of the first `want` event to come within `within` seconds (others are skipped)."""
    deadline = time.monotonic() + within
    while True:
        name, data = await read_event(resp, deadline)
        if name == want:
            return data


async def send_note(client: TestClient, rid: str = "u-1", n: int = 0) -> str:
    resp = await client.post("/v1/sends", json={"template": "note", "recipient": rid, "data": {"n": n}},
                             headers={"Authorization": "Bearer k-admin"})
    assert resp.status == 202, await resp.text()
    message_id: str = (await resp.json())["steps"][0]["messageId"]
    return message_id


async def put_note(client: TestClient) -> None:
    resp = await client.put("/v1/templates/note", json=NOTE, headers={"Authorization": "Bearer k-admin"})
    assert resp.status == 201


async def test_a_stream_starts_with_the_count_and_pushes_each_new_message_and_the_new_count(
        client: TestClient) -> None:
    await put_note(client)
    await send_note(client, n=1)
    async with client.get("/v1/recipients/u-1/inbox/stream") as resp:
        assert resp.status == 200 and resp.headers["Content-Type"] == "text/event-stream"
        assert await wait_for_event(resp, "unseen") == {"unseen": 1}
        mid = await send_note(client, n=2)
        message = await wait_for_event(resp, "message")
        assert await wait_for_event(resp, "unseen") == {"unseen": 2}
    page = await (await client.get("/v1/recipients/u-1/inbox")).json()
    assert message == {**page["messages"][0], "deliveredAt": None}  # the stream marks nothing delivered
    assert message["messageId"] == mid and message["content"] == {"title": "Note 2"}


async def test_the_count_goes_down_as_messages_are_viewed_or_clicked(client: TestClient) -> None:
    await put_note(client)
    first, second = await send_note(client, n=1), await send_note(client, n=2)
    async with client.get("/v1/recipients/u-1/inbox/stream") as resp:
        assert await wait_for_event(resp, "unseen") == {"unseen": 2}
        assert (await client.post(f"/v1/recipients/u-1/inbox/{first}/viewed")).status == 204
        assert await wait_for_event(resp, "unseen") == {"unseen": 1}
        events = await client.post("/v1/events", json={"events": [{"messageId": second, "type": "clicked"}]})
        assert events.status == 200, await events.text()
        assert await wait_for_event(resp, "unseen") == {"unseen": 0}


async def test_another_recipients_changes_do_not_reach_a_stream(client: TestClient) -> None:
    await put_note(client)
    async with client.get("/v1/recipients/u-1/inbox/stream") as resp:
        assert await wait_for_event(resp, "unseen") == {"unseen": 0}
        await send_note(client, rid="u-2")
        mine = await send_note(client, rid="u-1")
        assert (await wait_for_event(resp, "message"))["messageId"] == mine


async def test_the_token_may_come_in_the_query_and_a_wrong_one_is_refused(make_client: Any,
                                                                          error_of: Any) -> None:
    settings = msgspec.convert({"auth": {"api_keys": KEYS, "inbox_secret": SECRET}}, Settings)
    client = await make_client(settings)
    token = recipient_token(SECRET, "u-1")
    async with client.get(f"/v1/recipients/u-1/inbox/stream?token={token}") as resp:
        assert resp.status == 200
        assert await wait_for_event(resp, "unseen") == {"unseen": 0}
    async with client.get("/v1/recipients/u-1/inbox/stream", headers={"X-Recipient-Token": token}) as resp:
        assert resp.status == 200
    async with client.get("/v1/recipients/u-1/inbox/stream", headers={"Authorization": "Bearer k-admin"}) as resp:
        assert resp.status == 200
    other = recipient_token(SECRET, "u-2")
    resp = await client.get(f"/v1/recipients/u-1/inbox/stream?token={other}")
    assert resp.status == 403
    error_of(await resp.json(), "forbidden")
    resp = await client.get("/v1/recipients/u-1/inbox/stream")
    assert resp.status == 401
    error_of(await resp.json(), "unauthorized")


async def test_beyond_max_streams_a_stream_is_refused_with_503_and_retry_after(make_client: Any,
                                                                               error_of: Any) -> None:
    client = await make_client(msgspec.convert({"server": {"max_streams": 2}}, Settings))
    async with client.get("/v1/recipients/u-1/inbox/stream") as one, \
            client.get("/v1/recipients/u-2/inbox/stream") as two:
        assert one.status == two.status == 200
        third = await client.get("/v1/recipients/u-3/inbox/stream")
        assert third.status == 503 and int(third.headers["Retry-After"]) >= 1
        error_of(await third.json(), "overloaded")
        assert (await client.get("/v1/recipients/u-3/inbox")).status == 200  # other requests are unaffected


async def test_an_idle_stream_is_pinged_and_one_whose_client_left_frees_its_place(make_client: Any) -> None:
    client = await make_client(msgspec.convert({"server": {"max_streams": 1, "stream_ping_s": 0.05}}, Settings))
    async with client.get("/v1/recipients/u-1/inbox/stream") as resp:
        assert await wait_for_event(resp, "comment") == "ping"
    deadline = time.monotonic() + 2.0
    while True:  # the server notices at its next ping that the client has gone
        again = await client.get("/v1/recipients/u-1/inbox/stream")
        if again.status == 200:
            again.close()
            break
        assert again.status == 503 and time.monotonic() < deadline, "the closed stream kept its place"
        await asyncio.sleep(0.02)


async def test_streams_end_when_the_server_stops_without_waiting_for_the_shutdown_timeout(tmp_path: Path) -> None:
    settings = msgspec.convert({"server": {"port": 0, "shutdown_timeout_s": 30.0},
                                "storage": {"data_dir": str(tmp_path)}}, Settings)
    server = Server(settings)
    await server.start()
    stopped = False
    try:
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{server.url}/v1/recipients/u-1/inbox/stream") as resp:
                assert await wait_for_event(resp, "unseen") == {"unseen": 0}
                began = time.monotonic()
                await server.stop()
                stopped = True
                assert time.monotonic() - began < 10.0
                assert await resp.content.read() == b""  # the stream ended cleanly: nothing more, then EOF
    finally:
        if not stopped:
            await server.stop()


async def test_a_client_that_stops_reading_is_cut_off_instead_of_queueing_without_end(
        make_client: Any, monkeypatch: Any) -> None:
    from cascade.http import inbox_stream

    monkeypatch.setattr(inbox_stream, "QUEUE_LIMIT", 4)
    client = await make_client(msgspec.convert({"server": {"max_streams": 1}}, Settings))
    big = {"channels": [{"channel": "inapp", "content": {"title": "{{blob}}"}}]}
    assert (await client.put("/v1/templates/big", json=big)).status == 201
    blob = "x" * 1_000_000
    stalled = await client.get("/v1/recipients/u-1/inbox/stream")  # and never read again
    assert stalled.status == 200
    deadline = time.monotonic() + 20.0
    while True:  # a megabyte a message: the sockets' buffers fill, then the stream's queue
        resp = await client.post("/v1/sends", json={"template": "big", "recipient": "u-1", "data": {"blob": blob}})
        assert resp.status in (202, 503)  # 503: shed while the loop is busy with these bodies; the next goes on
        again = await client.get("/v1/recipients/u-2/inbox/stream")
        if again.status == 200:  # the stalled stream was dropped: its place is free
            again.close()
            break
        assert again.status == 503 and time.monotonic() < deadline, "the stalled stream was never cut off"
    stalled.close()


async def test_max_streams_0_turns_streams_off(make_client: Any, error_of: Any) -> None:
    client = await make_client(msgspec.convert({"server": {"max_streams": 0}}, Settings))
    resp = await client.get("/v1/recipients/u-1/inbox/stream")
    assert resp.status == 503 and "Retry-After" in resp.headers
    error_of(await resp.json(), "overloaded")


async def test_a_burst_of_messages_reaches_the_stream_whole_and_in_order(client: TestClient) -> None:
    await put_note(client)
    async with client.get("/v1/recipients/u-1/inbox/stream") as resp:
        assert await wait_for_event(resp, "unseen") == {"unseen": 0}
        batch = {"sends": [{"template": "note", "recipient": "u-1", "data": {"n": n}} for n in range(100)]}
        answer = await client.post("/v1/sends", json=batch)
        assert answer.status == 200, await answer.text()
        sent = [item["send"]["steps"][0]["messageId"] for item in (await answer.json())["results"]]
        seen: list[str] = []
        unseen = 0
        deadline = time.monotonic() + 2.0
        # The count may reach 100 before the last message events do (a read
        # under way sees every message the shard has applied): wait for both.
        while len(seen) < len(sent) or unseen != 100:
            name, data = await read_event(resp, deadline)
            if name == "message":
                seen.append(data["messageId"])
            elif name == "unseen":
                unseen = data["unseen"]
    assert seen == sent  # each once, oldest first, none lost while reads were coalesced
