"""Event ingestion over HTTP: one event, a batch, NDJSON; item errors never
fail the rest of the batch; only malformed bodies fail the request."""

from __future__ import annotations

import json
from typing import Any

from aiohttp.test_utils import TestClient

NDJSON = {"Content-Type": "application/x-ndjson"}


async def started_send(client: TestClient, put_shipped: Any, recipient: str = "u-42") -> str:
    await put_shipped()
    resp = await client.post("/v1/sends", json={"template": "order-shipped", "recipient": recipient})
    send_id: str = (await resp.json())["id"]
    return send_id


async def test_a_single_event_is_accepted(client: TestClient, put_shipped: Any) -> None:
    sid = await started_send(client, put_shipped)
    resp = await client.post("/v1/events", json={"messageId": f"{sid}.1", "type": "delivered"})
    assert resp.status == 200
    assert await resp.json() == {"accepted": 1, "duplicates": 0, "errors": []}


async def test_repeats_are_duplicates_and_item_errors_keep_their_index(client: TestClient, put_shipped: Any) -> None:
    sid = await started_send(client, put_shipped)
    events = [
        {"messageId": f"{sid}.1", "type": "delivered"},
        {"messageId": f"{sid}.1", "type": "delivered"},  # duplicate
        {"messageId": "snd_000000000000001.1", "type": "viewed"},  # unknown message
        {"messageId": f"{sid}.1", "type": "opened"},  # unknown type
        {"type": "viewed"},  # names no message
        {"messageId": f"{sid}.1", "type": "viewed", "at": "yesterday"},  # bad at
        {"messageId": f"{sid}.1", "type": 7},  # wrong type
        "not an object",
        {"sendId": sid, "channel": "inapp", "type": "clicked", "at": "2026-11-27T10:01:00.000Z"},
    ]
    resp = await client.post("/v1/events", json={"events": events})
    assert resp.status == 200
    body = await resp.json()
    assert body["accepted"] == 2 and body["duplicates"] == 1
    assert [(e["index"], e["code"]) for e in body["errors"]] == [
        (2, "unknown_message"), (3, "invalid"), (4, "invalid"), (5, "invalid"), (6, "invalid"), (7, "invalid")]
    assert all(e["message"] for e in body["errors"])
    view = await (await client.get(f"/v1/sends/{sid}")).json()
    assert view["stoppedBy"] == {"step": 1, "signal": "clicked"}


def respellings(sid: str, step: int = 1) -> list[str]:
    """Other spellings of the message `<sid>.<step>`: none of them is its id."""
    hexpart = sid[4:]
    wide = "".join(chr(0xFF10 + int(c)) if c.isdigit() else c for c in hexpart)  # full-width digits
    out = [f"{sid}.0{step}", f"{sid}.{chr(0xFF10 + step)}", f"snd_{hexpart.upper()}.{step}",
           f"{sid}.+{step}", f"{sid}. {step}", f"{sid}.{step} ", f"{sid}.0"]
    if wide != hexpart:
        out.append(f"snd_{wide}.{step}")
    return out


async def send_with_hex_letters(client: TestClient, put_shipped: Any) -> str:
    """A send whose id holds a hex letter, so that its upper-case spelling differs."""
    await put_shipped()
    for _ in range(50):
        sid: str = (await (await client.post("/v1/sends", json={"template": "order-shipped",
                                                                 "recipient": "u-42"})).json())["id"]
        if sid[4:] != sid[4:].upper():
            return sid
    raise AssertionError("no send id with a hex letter in 50 sends")


async def test_only_the_canonical_spelling_of_a_message_id_names_a_message(client: TestClient,
                                                                           put_shipped: Any) -> None:
    sid = await send_with_hex_letters(client, put_shipped)
    others = respellings(sid)
    events = [{"messageId": m, "type": "viewed"} for m in others]
    events.append({"sendId": f"snd_{sid[4:].upper()}", "channel": "inapp", "type": "viewed"})
    body = await (await client.post("/v1/events", json={"events": events})).json()
    assert body["accepted"] == 0 and body["duplicates"] == 0
    assert [(e["index"], e["code"]) for e in body["errors"]] == [(i, "unknown_message") for i in range(len(events))]
    view = await (await client.get(f"/v1/sends/{sid}")).json()
    assert view["status"] == "active" and view["steps"][0]["signals"]["viewed"] is None
    for m in others:  # also one at a time, as a single-event body
        single = await (await client.post("/v1/events", json={"messageId": m, "type": "viewed"})).json()
        assert [e["code"] for e in single["errors"]] == ["unknown_message"], m
    canonical = await (await client.post("/v1/events", json={"messageId": f"{sid}.1", "type": "viewed"})).json()
    assert canonical == {"accepted": 1, "duplicates": 0, "errors": []}


async def test_a_send_id_in_another_spelling_is_404(client: TestClient, put_shipped: Any, error_of: Any) -> None:
    sid = await send_with_hex_letters(client, put_shipped)
    letter = next(i for i, c in enumerate(sid) if i >= 4 and c in "abcdef")
    one_upper = sid[:letter] + sid[letter].upper() + sid[letter + 1:]
    for other in (f"snd_{sid[4:].upper()}", one_upper, f"SND_{sid[4:]}", f"{sid} "):
        resp = await client.get(f"/v1/sends/{other}")
        assert resp.status == 404, other
        error_of(await resp.json(), "not_found")
        assert (await client.delete(f"/v1/sends/{other}")).status == 404
    assert (await (await client.get(f"/v1/sends/{sid}")).json())["status"] == "active"


async def test_push_emits_no_viewed_signal(client: TestClient, put_shipped: Any) -> None:
    sid = await started_send(client, put_shipped)
    resp = await client.post("/v1/events", json={"messageId": f"{sid}.2", "type": "viewed"})
    body = await resp.json()
    assert body["errors"][0]["code"] == "unsupported_signal"


async def test_a_single_invalid_event_is_an_item_error_not_a_failed_request(client: TestClient) -> None:
    resp = await client.post("/v1/events", json={"messageId": "x.1", "type": "viewed", "colour": "red"})
    assert resp.status == 200
    body = await resp.json()
    assert body["accepted"] == 0 and body["errors"][0]["index"] == 0 and body["errors"][0]["code"] == "invalid"
    assert "colour" in body["errors"][0]["message"]


async def test_ndjson_one_event_a_line_with_per_line_errors(client: TestClient, put_shipped: Any) -> None:
    sid = await started_send(client, put_shipped)
    lines = [json.dumps({"messageId": f"{sid}.1", "type": "delivered"}), "",
             "{not json", json.dumps({"messageId": f"{sid}.1", "type": "delivered"}),
             json.dumps({"messageId": f"{sid}.1", "type": "viewed"}) + "\r"]
    resp = await client.post("/v1/events", data="\n".join(lines) + "\n", headers=NDJSON)
    assert resp.status == 200
    body = await resp.json()
    assert body["accepted"] == 2 and body["duplicates"] == 1
    assert [(e["index"], e["code"]) for e in body["errors"]] == [(1, "invalid")]


async def test_more_than_ten_thousand_events_is_413(client: TestClient, error_of: Any) -> None:
    event = {"messageId": "snd_000000000000001.1", "type": "viewed"}
    resp = await client.post("/v1/events", json={"events": [event] * 10_001})
    assert resp.status == 413
    error_of(await resp.json(), "too_many_events")
    line = json.dumps(event)
    resp = await client.post("/v1/events", data="\n".join([line] * 10_001), headers=NDJSON)
    assert resp.status == 413


async def test_ten_thousand_events_are_one_batch(client: TestClient, put_shipped: Any) -> None:
    sid = await started_send(client, put_shipped)
    resp = await client.post("/v1/events", json={"events": [{"messageId": f"{sid}.1", "type": "delivered"}] * 10_000})
    assert resp.status == 200
    assert (await resp.json())["duplicates"] == 9_999


async def test_malformed_bodies_fail_the_request_with_400(client: TestClient, error_of: Any) -> None:
    for raw in (b"{", b"", b"[]", b"42", b'{"events": 5}', b'{"events": [] } x'):
        resp = await client.post("/v1/events", data=raw, headers={"Content-Type": "application/json"})
        assert resp.status == 400, raw
        error_of(await resp.json(), "bad_request")


async def test_unknown_fields_beside_events_are_422(client: TestClient, error_of: Any) -> None:
    resp = await client.post("/v1/events", json={"events": [], "extra": 1})
    assert resp.status == 422
    assert error_of(await resp.json())["details"][0]["path"] == "$.extra"


async def test_events_in_another_content_type_are_415(client: TestClient) -> None:
    resp = await client.post("/v1/events", data=b'{"type": "viewed"}', headers={"Content-Type": "text/csv"})
    assert resp.status == 415


async def test_an_empty_batch_accepts_nothing(client: TestClient) -> None:
    resp = await client.post("/v1/events", json={"events": []})
    assert await resp.json() == {"accepted": 0, "duplicates": 0, "errors": []}
    resp = await client.post("/v1/events", data=b"\n\n", headers=NDJSON)
    assert await resp.json() == {"accepted": 0, "duplicates": 0, "errors": []}
