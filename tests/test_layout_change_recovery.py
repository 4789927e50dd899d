"""A data directory recovered by a server with another number of shards:
every record reaches the shard that owns its send or recipient now, from
the journal alone as from a snapshot, and again after a second change."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
from serverproc import api, config_text, free_port, running

from cascade.config import load_settings

pytestmark = pytest.mark.slow

CHAIN = {"channels": [
    {"channel": "inapp", "stopCondition": "viewed", "waitMinutes": 10, "content": {"body": "hi"}},
    {"channel": "email", "content": {"subject": "hi"}}], "config": {"sequenceEnabled": True}}


def settings(tmp_path: Path, shards: int) -> Any:
    path = tmp_path / f"shards-{shards}.toml"
    path.write_text(config_text(tmp_path / "data", free_port(), snapshot_interval_s=3600, shards=shards),
                    encoding="utf-8")
    return load_settings(path, environ={})


async def views(http: Any, ids: list[str]) -> list[Any]:
    return [await api(http, "GET", f"/v1/sends/{sid}") for sid in ids]


async def start_some(http: Any, tag: str, n: int) -> list[str]:
    ids = []
    for i in range(n):
        send = await api(http, "POST", "/v1/sends", {"template": "t", "recipient": {"id": f"{tag}-{i}",
                                                                                    "email": "a@b.c"}})
        ids.append(send["id"])
        if i % 3 == 0:
            await api(http, "POST", "/v1/events", {"messageId": f"{send['id']}.1", "type": "viewed"})
    return ids


@pytest.mark.parametrize("keep_snapshots", [False, True], ids=["journal-only", "with-snapshot"])
async def test_a_changed_shard_count_recovers_every_send(tmp_path: Path, keep_snapshots: bool) -> None:
    async with running(settings(tmp_path, 2)) as (_, http):
        await api(http, "PUT", "/v1/templates/t", CHAIN)
        ids = await start_some(http, "a", 24)
        await api(http, "POST", "/v1/admin/clock", {"advanceSeconds": 600})
        before = await views(http, ids)
    if not keep_snapshots:
        shutil.rmtree(tmp_path / "data" / "snapshots")
    async with running(settings(tmp_path, 4)) as (_, http):
        assert await views(http, ids) == before
        more = await start_some(http, "b", 12)
        before = await views(http, ids + more)
        metrics = await api(http, "GET", "/v1/templates/t/metrics")
    if not keep_snapshots:
        shutil.rmtree(tmp_path / "data" / "snapshots")
    async with running(settings(tmp_path, 3)) as (_, http):
        assert await views(http, ids + more) == before
        assert await api(http, "GET", "/v1/templates/t/metrics") == metrics
        inbox = await api(http, "GET", "/v1/recipients/b-1/inbox")
        assert [m["messageId"] for m in inbox["messages"]] == [f"{more[1]}.1"]
