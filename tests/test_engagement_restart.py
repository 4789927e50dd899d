"""Engagement order (rule 14) across restarts: a send keeps the order it
started with, and a recipient's engagement record survives, from a
snapshot and from the journal after it."""

from __future__ import annotations

from pathlib import Path

import pytest
from serverproc import api, inproc_settings, running

pytestmark = pytest.mark.slow

ORDERED = {"channels": [
    {"channel": "inapp", "stopCondition": "viewed", "waitMinutes": 30, "content": {"body": "hi"}},
    {"channel": "email", "stopCondition": "clicked", "waitMinutes": 60, "content": {"subject": "hi"}},
], "config": {"sequenceEnabled": True, "order": "engagement"}}
PERSON = {"id": "u", "email": "u@example.com"}


async def test_orders_and_engagement_records_survive_restarts(tmp_path: Path) -> None:
    settings = inproc_settings(tmp_path, tmp_path / "data")
    views = []
    async with running(settings) as (_, http):
        await api(http, "PUT", "/v1/templates/t", ORDERED)
        for n in range(6):
            send = await api(http, "POST", "/v1/sends", {"template": "t", "recipient": PERSON})
            email = next(s for s in send["steps"] if s["channel"] == "email")
            if email["status"] == "pending":
                await api(http, "POST", "/v1/admin/clock", {"advanceSeconds": 1800})
            await api(http, "POST", "/v1/events", {"messageId": email["messageId"], "type": "clicked"})
            views.append(await api(http, "GET", f"/v1/sends/{send['id']}"))
            if n == 2:
                await api(http, "POST", "/v1/admin/snapshots")  # the rest only in the journal after it
        before = await api(http, "GET", "/v1/templates/t/metrics")
    async with running(settings) as (_, http):
        for view in views:
            assert await api(http, "GET", f"/v1/sends/{view['id']}") == view
        assert await api(http, "GET", "/v1/templates/t/metrics") == before
        firsts = []
        for _ in range(5):  # six clicked emails and no viewed in-app: email comes first
            send = await api(http, "POST", "/v1/sends", {"template": "t", "recipient": PERSON})
            firsts.append(send["order"][0])
        assert firsts.count("email") >= 4, firsts
