"""Engagement order (rule 14): each send orders the template's channels for
its recipient by how that recipient engaged before, says so in its view,
keeps each step's own condition and window, and learns: a recipient who
only ever answers email soon gets email first."""

from __future__ import annotations

from typing import Any

from aiohttp.test_utils import TestClient

ORDERED = {"channels": [
    {"channel": "inapp", "stopCondition": "viewed", "waitMinutes": 30, "content": {"body": "hi"}},
    {"channel": "push", "stopCondition": "clicked", "waitMinutes": 10, "content": {"body": "hi"}},
    {"channel": "email", "stopCondition": "clicked", "waitMinutes": 60, "content": {"subject": "hi"}},
], "config": {"sequenceEnabled": True, "order": "engagement"}}
WAITS = {"inapp": (30, "viewed"), "push": (10, "clicked"), "email": (60, "clicked")}
PERSON = {"id": "u", "email": "u@example.com", "pushTokens": ["tok"]}


async def ok(client: TestClient, method: str, path: str, body: Any = None, status: int = 200) -> Any:
    resp = await client.request(method, path, json=body)
    assert resp.status in (status, 201, 202), await resp.text()
    return await resp.json()


async def test_a_send_says_its_order_and_each_steps_score(client: TestClient) -> None:
    tpl = await ok(client, "PUT", "/v1/templates/t", ORDERED)
    assert tpl["config"]["order"] == "engagement"
    send = await ok(client, "POST", "/v1/sends", {"template": "t", "recipient": PERSON})
    order = send["order"]
    assert sorted(order) == ["email", "inapp", "push"]
    assert [s["channel"] for s in send["steps"]] == order and [s["step"] for s in send["steps"]] == [1, 2, 3]
    scores = [s["score"] for s in send["steps"]]
    assert scores == sorted(scores, reverse=True) and all(0 <= x <= 1 for x in scores)
    for step in send["steps"][:-1]:  # each keeps its own condition and window; the last is terminal
        assert (step["waitMinutes"], step["stopCondition"]) == WAITS[step["channel"]]
    assert (send["steps"][-1]["waitMinutes"], send["steps"][-1]["stopCondition"]) == (None, None)
    again = await ok(client, "GET", f"/v1/sends/{send['id']}")
    assert again["order"] == order and [s["score"] for s in again["steps"]] == scores
    assert [s["messageId"] for s in send["steps"]] == [f"{send['id']}.{n}" for n in (1, 2, 3)]


async def test_validation_of_the_order(client: TestClient) -> None:
    resp = await client.put("/v1/templates/t", json={**ORDERED, "config": {"sequenceEnabled": True,
                                                                          "order": "random"}})
    assert resp.status == 422
    assert "$.config.order" in [d["path"] for d in (await resp.json())["error"]["details"]]
    last_bare = {**ORDERED, "channels": [*ORDERED["channels"][:2], {"channel": "email", "content": {}}]}
    resp = await client.put("/v1/templates/t", json=last_bare)
    assert resp.status == 422  # with engagement order every step carries its condition and window
    assert {d["path"] for d in (await resp.json())["error"]["details"]} == {
        "$.channels[2].stopCondition", "$.channels[2].waitMinutes"}


async def engage_on_email(client: TestClient, send: dict[str, Any]) -> int:
    """Let the chain run until its email fires, then click it; the step it was."""
    for step in send["steps"]:
        if step["channel"] == "email":
            await ok(client, "POST", "/v1/events", {"messageId": step["messageId"], "type": "clicked"})
            return int(step["step"])
        await ok(client, "POST", "/v1/admin/clock", {"advanceSeconds": WAITS[step["channel"]][0] * 60})
    raise AssertionError("no email step")


async def test_a_recipient_who_answers_only_email_soon_gets_email_first(client: TestClient) -> None:
    await ok(client, "PUT", "/v1/templates/t", ORDERED)
    positions = []
    for _ in range(30):
        send = await ok(client, "POST", "/v1/sends", {"template": "t", "recipient": PERSON})
        positions.append(await engage_on_email(client, send))
        view = await ok(client, "GET", f"/v1/sends/{send['id']}")
        assert view["status"] in ("stopped", "completed")
    assert sum(p == 1 for p in positions[-10:]) >= 8, positions
    metrics = await ok(client, "GET", "/v1/templates/t/metrics")
    by_channel = {s["channel"]: s for s in metrics["steps"]}
    assert set(by_channel) == {"inapp", "push", "email"} and all(s["step"] is None for s in metrics["steps"])
    assert by_channel["email"]["requested"] == 30 and by_channel["email"]["clicked"] == 30
    assert by_channel["inapp"]["requested"] + by_channel["push"]["requested"] == sum(p - 1 for p in positions)
