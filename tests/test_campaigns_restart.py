"""Campaigns survive restarts: a fan-out interrupted by a stop or a crash
resumes where it was, starting every row exactly once.

Each test stops (or crashes) an engine mid fan-out, recovers the data into
a fresh engine with `cascade.snapshots.recovery.recover`, lets the fan-out
finish (`advance(0)`), and counts the campaign's sends per recipient.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import Any

import msgpack
import pytest

from cascade.campaigns import Campaigns, attach_campaigns
from cascade.campaigns.book import Campaign, CampaignBook
from cascade.durability.coordinator import SnapshotCoordinator
from cascade.durability.recovery import recover
from cascade.engine import Engine, EngineConfig, ManualClock, MemoryProvider
from cascade.storage import FileJournal, MemoryJournal

T0 = 1_800_000_000.0
SHIPPED = {"channels": [
    {"channel": "inapp", "stopCondition": "viewed", "waitMinutes": 30, "content": {"body": "Order {{order.id}}"}},
    {"channel": "push", "content": {"body": "Order {{order.id}}"}},
], "config": {"sequenceEnabled": True}}
ROWS = 1200


def book_of(engine: Engine) -> CampaignBook:
    """The campaign book attached to `engine`."""
    return next(e.book for e in engine.extensions if isinstance(e, Campaigns))


class Node:
    """An engine over a data directory (or in-memory journal storage) that outlives it."""

    def __init__(self, kind: str, root: Path, shards: int = 3, rate: float = 2000) -> None:
        self.kind, self.root, self.shards, self.rate = kind, root, shards, rate
        self.storage: dict[int, bytearray] = {}
        self.engine: Engine | None = None
        self.journal: Any = None

    def open(self, storage: dict[int, bytearray] | None = None) -> Engine:
        if storage is not None:
            self.storage = storage
        self.journal = (FileJournal(self.root / "journal", fsync="batch") if self.kind == "file"
                        else MemoryJournal(self.storage))
        campaign_dir = str(self.root / "campaigns") if self.kind == "file" else None  # memory: rows inline
        engine = Engine(ManualClock(T0), {c: MemoryProvider(c, record=False) for c in ("push", "email", "sms")},
                        EngineConfig(shards=self.shards, gc_freeze_interval_s=0), journal=self.journal)
        attach_campaigns(engine, campaign_dir, self.rate)
        recover(engine, str(self.root / "snapshots"), self.journal)
        self.engine = engine.start()
        return engine

    def snapshot(self) -> None:
        assert self.engine is not None
        SnapshotCoordinator(self.engine, self.journal, str(self.root / "snapshots"), keep=2, interval_s=0).take()

    def stop(self) -> None:
        assert self.engine is not None
        self.engine.stop()
        self.journal.close()
        self.engine = None

    def durable_copy(self) -> dict[int, bytearray]:
        """What a crash right now would leave of an in-memory journal."""
        image: dict[int, bytearray] = self.journal.crash_image()
        return image


@pytest.fixture(params=["file", "memory"])
def node(request: Any, tmp_path: Path) -> Node:
    return Node(request.param, tmp_path)


def start_campaign(engine: Engine, rows: int = ROWS) -> Campaign:
    engine.put_template("shipped", SHIPPED).wait()
    upload = book_of(engine).new_upload()
    for i in range(rows):
        upload.add(i + 1, f"u{i}", {"pushTokens": [f"t{i}"]}, msgpack.packb({"order": {"id": f"A{i}"}}))
    c: Campaign = book_of(engine).create(upload, upload.finish(), "shipped", None, "restart", None).wait()
    return c


def wait_started(c: Campaign, at_least: int) -> None:
    deadline = time.monotonic() + 10
    while c.started < at_least:
        assert time.monotonic() < deadline, f"only {c.started} rows started"
        time.sleep(0.002)


def sends_per_recipient(engine: Engine, cid: str) -> Counter[str]:
    seen: Counter[str] = Counter()
    cursor = None
    while True:
        page = engine.list_sends(campaign=cid, limit=200, before=cursor).wait()
        seen.update(s["recipient"] for s in page["sends"])
        cursor = page["next"]
        if cursor is None:
            return seen


def finish_and_check(engine: Engine, cid: str, rows: int = ROWS) -> None:
    engine.advance(0)
    c = book_of(engine).get(cid)
    totals = engine.totals([c.group]).wait()
    view = book_of(engine).view(c, totals.get(c.group))
    assert view["status"] == "completed" and view["sendsStarted"] == rows, view
    per = sends_per_recipient(engine, cid)
    assert set(per) == {f"u{i}" for i in range(rows)}  # none lost
    assert set(per.values()) == {1}  # none twice


def test_a_stop_during_fanout_resumes_without_repeating_or_losing_a_row(node: Node) -> None:
    engine = node.open()
    c = start_campaign(engine)
    wait_started(c, 200)
    node.stop()
    assert c.status == "running" and c.started < ROWS
    finish_and_check(node.open(), c.id)


def test_a_crash_during_fanout_resumes_from_what_was_durable(tmp_path: Path) -> None:
    node = Node("memory", tmp_path)
    engine = node.open()
    c = start_campaign(engine)
    wait_started(c, 300)
    crashed = node.durable_copy()  # the fan-out goes on in the old engine: those sends are lost
    node.stop()
    engine = node.open(crashed)
    recovered = sends_per_recipient(engine, c.id)
    assert 300 <= sum(recovered.values()) < ROWS and set(recovered.values()) == {1}
    finish_and_check(engine, c.id)


def test_a_snapshot_during_fanout_plus_the_journal_resumes_exactly(node: Node) -> None:
    engine = node.open()
    c = start_campaign(engine)
    wait_started(c, 200)
    node.snapshot()  # the started-rows bitmaps are in the shards' files from here on
    wait_started(c, c.started + 200)
    node.stop()
    finish_and_check(node.open(), c.id)


def test_resuming_with_another_shard_count_still_starts_each_row_once(tmp_path: Path) -> None:
    node = Node("file", tmp_path, shards=3)
    engine = node.open()
    c = start_campaign(engine)
    wait_started(c, 300)
    node.snapshot()
    wait_started(c, c.started + 100)
    node.stop()
    node.shards = 2
    finish_and_check(node.open(), c.id)


def test_completed_and_cancelled_campaigns_stay_so_after_a_restart(node: Node) -> None:
    node.rate = 0
    engine = node.open()
    done = start_campaign(engine, rows=50)
    engine.advance(0)
    upload = book_of(engine).new_upload()
    upload.add(1, "late", None, None)
    later = book_of(engine).create(upload, upload.finish(), "shipped", T0 + 3600, "later", None).wait()
    book_of(engine).cancel(later.id).wait()
    if node.kind == "file":
        node.snapshot()
    node.stop()
    engine = node.open()
    engine.advance(7200)
    assert book_of(engine).get(done.id).status == "completed"
    assert book_of(engine).get(later.id).status == "cancelled"
    assert sends_per_recipient(engine, later.id) == Counter()
    assert sum(sends_per_recipient(engine, done.id).values()) == 50
    assert [c.id for c in book_of(engine).newest_first()] == [later.id, done.id]
    if node.kind == "file":
        assert list((node.root / "campaigns").iterdir()) == []  # rows of ended campaigns are removed


def test_a_scheduled_campaign_survives_a_restart_and_starts_on_time(node: Node) -> None:
    engine = node.open()
    engine.put_template("shipped", SHIPPED).wait()
    upload = book_of(engine).new_upload()
    for i in range(20):
        upload.add(i + 1, f"u{i}", None, None)
    c = book_of(engine).create(upload, upload.finish(), "shipped", T0 + 600, None, None).wait()
    node.stop()
    engine = node.open()
    assert book_of(engine).get(c.id).status == "scheduled"
    engine.advance(600)
    assert book_of(engine).get(c.id).status == "completed"
    assert sum(sends_per_recipient(engine, c.id).values()) == 20


def test_a_rows_file_without_its_campaign_is_removed_at_start(tmp_path: Path) -> None:
    node = Node("file", tmp_path)
    node.open()
    node.stop()
    orphan = tmp_path / "campaigns" / "cmp_00000000000000aa.rows"
    orphan.parent.mkdir(exist_ok=True)
    orphan.write_bytes(b"crashed between the upload and its record")
    node.open()
    assert not orphan.exists()
    node.stop()


def test_without_a_journal_nothing_needs_one(tmp_path: Path) -> None:
    engine = Engine(ManualClock(T0), {}, EngineConfig(shards=2, gc_freeze_interval_s=0))
    attach_campaigns(engine)
    engine.start()
    try:
        c = start_campaign(engine, rows=100)
        finish_and_check(engine, c.id, rows=100)
        book_of(engine).cancel(c.id).wait()
        assert book_of(engine).get(c.id).status == "cancelled"
    finally:
        engine.stop()
