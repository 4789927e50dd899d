"""A send view's `history`: what happened to the send and why, oldest first,
as a user reads it to find out why a step escalated."""

from __future__ import annotations

from typing import Any

from aiohttp.test_utils import TestClient

from cascade.config import Settings
from cascade.delivery.providers.base import DeliveryOutcome, OutgoingMessage
from cascade.engine import Engine, EngineConfig, ManualClock, MemoryProvider

CHAIN = {"channels": [
    {"channel": "inapp", "stopCondition": "viewed", "waitMinutes": 30, "content": {"body": "hi"}},
    {"channel": "push", "stopCondition": "clicked", "waitMinutes": 60, "content": {"body": "hi"}},
    {"channel": "sms", "content": {"body": "hi"}},
], "config": {"sequenceEnabled": True}}


async def manual(make_client: Any) -> TestClient:
    client: TestClient = await make_client(Settings())
    resp = await client.put("/v1/templates/chain", json=CHAIN)
    assert resp.status in (200, 201), await resp.text()
    return client


async def start_send(client: TestClient, recipient: dict[str, Any]) -> dict[str, Any]:
    resp = await client.post("/v1/sends", json={"template": "chain", "recipient": recipient})
    assert resp.status == 202, await resp.text()
    body: dict[str, Any] = await resp.json()
    return body


async def advance(client: TestClient, seconds: int) -> None:
    resp = await client.post("/v1/admin/clock", json={"advanceSeconds": seconds})
    assert resp.status == 200, await resp.text()


async def view(client: TestClient, send_id: str) -> dict[str, Any]:
    body: dict[str, Any] = await (await client.get(f"/v1/sends/{send_id}")).json()
    return body


def whats(history: list[dict[str, Any]]) -> list[tuple[int | None, str]]:
    return [(e["step"], e["what"]) for e in history]


async def test_an_escalated_chain_says_which_window_ended_and_why_each_step_fired(make_client: Any) -> None:
    client = await manual(make_client)
    send = await start_send(client, {"id": "u-1", "phone": "+100", "pushTokens": ["t"]})
    assert whats(send["history"]) == [(1, "fired")]
    await advance(client, 30 * 60)
    await advance(client, 60 * 60)
    h = (await view(client, send["id"]))["history"]
    assert whats(h) == [(1, "fired"), (1, "window_ended"), (2, "fired"), (2, "window_ended"), (3, "fired"),
                        (None, "completed")]
    assert h[0]["detail"] == {"channel": "inapp", "after": "start"}
    assert h[1]["detail"]["stopCondition"] == "viewed" and h[1]["at"] == h[1]["detail"]["deadline"]
    assert h[2]["detail"] == {"channel": "push", "after": "window_ended", "previousStep": 1, "stopCondition": "viewed"}
    assert h[4]["detail"]["previousStep"] == 2 and h[5]["detail"] == {"status": "completed"}
    ats = [e["at"] for e in h]
    assert ats == sorted(ats)


async def test_a_stopped_chain_shows_the_signals_and_the_one_that_stopped_it(make_client: Any) -> None:
    client = await manual(make_client)
    send = await start_send(client, {"id": "u-2", "pushTokens": ["t"]})
    await advance(client, 30 * 60)
    events = [{"messageId": f"{send['id']}.2", "type": t} for t in ("delivered", "clicked")]
    assert (await client.post("/v1/events", json={"events": events})).status == 200
    h = (await view(client, send["id"]))["history"]
    assert whats(h)[-3:] == [(2, "signal"), (2, "signal"), (2, "stopped")]
    assert [e["detail"] for e in h[-3:]] == [{"signal": "delivered"}, {"signal": "clicked"}, {"signal": "clicked"}]


async def test_a_skipped_step_and_a_refused_one_say_their_reasons(make_client: Any,
                                                                  providers: dict[str, MemoryProvider]) -> None:
    client = await manual(make_client)
    providers["sms"].fail()
    send = await start_send(client, {"id": "u-3", "phone": "+100"})  # no push token
    await advance(client, 30 * 60)
    v = await view(client, send["id"])
    h = v["history"]
    assert whats(h) == [(1, "fired"), (1, "window_ended"), (2, "skipped"), (3, "fired"), (3, "delivery_failed"),
                        (None, "completed")]
    assert h[2]["detail"] == {"channel": "push", "reason": "no_address"}
    assert h[3]["detail"] == {"channel": "sms", "after": "skipped", "previousStep": 2, "reason": "no_address"}
    assert h[4]["detail"] == {"channel": "sms", "reason": "retries_exhausted"}
    assert v["status"] == "completed" and h[-1]["detail"] == {"status": "completed"}  # step 1 reached the inbox


async def test_a_cancelled_send_ends_its_history_with_the_cancel(make_client: Any) -> None:
    client = await manual(make_client)
    send = await start_send(client, {"id": "u-4"})
    await advance(client, 60)
    assert (await client.delete(f"/v1/sends/{send['id']}")).status == 200
    h = (await view(client, send["id"]))["history"]
    assert whats(h) == [(1, "fired"), (None, "cancelled")]
    assert h[1]["at"] > h[0]["at"]


async def test_history_is_in_listed_views_and_survives_the_listing(make_client: Any) -> None:
    client = await manual(make_client)
    send = await start_send(client, {"id": "u-5"})
    listed = await (await client.get("/v1/sends?recipient=u-5")).json()
    assert [s["history"] for s in listed["sends"]] == [send["history"]]


class RetryingProvider:
    """Answers every message as accepted on its third try."""

    synchronous = True
    name = "retrying"

    def deliver_now(self, message: OutgoingMessage) -> DeliveryOutcome:
        return DeliveryOutcome(True, attempts=3)

    async def deliver(self, message: OutgoingMessage) -> DeliveryOutcome:
        return self.deliver_now(message)

    async def close(self) -> None:
        return None


async def test_a_message_its_provider_took_after_retries_says_so(make_client: Any, start: float) -> None:
    engine = Engine(ManualClock(start), {"push": RetryingProvider(), "email": MemoryProvider("email"),
                                         "sms": MemoryProvider("sms")}, EngineConfig(shards=1)).start()
    try:
        client = await make_client(Settings(), on=engine, campaigns=None)
        assert (await client.put("/v1/templates/chain", json=CHAIN)).status == 201
        send = await start_send(client, {"id": "u-6", "pushTokens": ["t"]})
        await advance(client, 30 * 60)
        h = (await view(client, send["id"]))["history"]
        assert whats(h)[2:4] == [(2, "fired"), (2, "delivery_retried")]
        assert h[3]["detail"] == {"attempts": 3}
    finally:
        engine.stop()


async def test_a_late_signal_that_stops_the_chain_keeps_the_window_that_ended_before_it(make_client: Any) -> None:
    client = await manual(make_client)
    send = await start_send(client, {"id": "u-7", "pushTokens": ["t"]})
    await advance(client, 30 * 60)
    before = (await view(client, send["id"]))["history"]
    assert whats(before) == [(1, "fired"), (1, "window_ended"), (2, "fired")]
    await advance(client, 60)  # the view comes a minute after step 1's window ended
    resp = await client.post("/v1/events", json={"messageId": f"{send['id']}.1", "type": "viewed"})
    assert resp.status == 200
    after = (await view(client, send["id"]))["history"]
    assert after[:3] == before  # rule 3 stops the chain; what happened before stays as it was
    assert whats(after)[3:] == [(1, "signal"), (1, "stopped")]
