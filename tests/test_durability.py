"""Durability of the engine: what was acknowledged comes back after a crash.

One behaviour suite, run against the file journal and the in-memory one. A
"crash" stops the engine without a final snapshot and reopens the journal
from what it wrote; recovery must rebuild the very same state: sends and
their steps, signals, metrics, inbox order, idempotency keys, templates with
their versions, recipients, and the manual clock.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any, Iterator

import pytest

from cascade.delivery.providers.base import DeliveryOutcome, OutgoingMessage
from cascade.durability.coordinator import SnapshotCoordinator
from cascade.durability.recovery import RecoveryRefused, recover
from cascade.engine import Engine, EngineConfig, ManualClock, MemoryProvider, shard_snapshot
from cascade.storage import FileJournal, MemoryJournal, list_snapshots

T0 = 1_800_000_000.0
CHAIN = {"channels": [
    {"channel": "inapp", "stopCondition": "viewed", "waitMinutes": 10, "content": {"body": "Hi {{recipient.id}}"}},
    {"channel": "push", "stopCondition": "clicked", "waitMinutes": 60, "content": {"body": "Order {{order.id}}"}},
    {"channel": "email", "content": {"subject": "Last call"}},
], "config": {"sequenceEnabled": True}}


class Node:
    """One engine over one data directory, which outlives crashes."""

    def __init__(self, kind: str, root: Path, providers: dict[str, Any] | None = None,
                 answer_wait_s: float = 120.0) -> None:
        self.answer_wait_s = answer_wait_s
        self.kind, self.root = kind, root
        self.storage: dict[int, bytearray] = {}
        self.providers = providers or {c: MemoryProvider(c) for c in ("push", "email", "sms")}
        self.engine: Engine | None = None
        self.result: Any = None

    def open(self) -> Engine:
        self.journal = (FileJournal(self.root / "journal", fsync="batch") if self.kind == "file"
                        else MemoryJournal(self.storage))
        engine = Engine(ManualClock(T0), self.providers, EngineConfig(shards=3, gc_freeze_interval_s=0, answer_wait_s=self.answer_wait_s),
                        journal=self.journal)
        self.result = recover(engine, str(self.root / "snapshots"), self.journal)
        self.engine = engine.start()
        self.coordinator = SnapshotCoordinator(engine, self.journal, str(self.root / "snapshots"), keep=2,
                                               interval_s=0)
        return self.engine

    def crash(self) -> None:
        """Stop without a final snapshot: only what was journaled remains."""
        assert self.engine is not None
        self.engine.stop()
        self.journal.close()
        self.engine = None

    def restart(self) -> Engine:
        self.crash()
        return self.open()


@pytest.fixture(params=["file", "memory"])
def node(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Node]:
    n = Node(request.param, tmp_path)
    n.open()
    yield n
    if n.engine is not None:
        n.crash()


def populate(e: Engine) -> list[str]:
    e.put_template("chain", CHAIN).wait()
    e.put_template("chain", {**CHAIN, "name": "second version"}).wait()
    e.put_template("gone", CHAIN).wait()
    e.delete_template("gone").wait()
    for i in range(4):
        e.put_recipient(f"u{i}", {"email": f"u{i}@x.io", "pushTokens": [f"t{i}"]}).wait()
    ids = [e.send("chain", f"u{i % 4}", {"order": {"id": i}}, idempotency_key=f"k{i}")[0].wait()["id"]
           for i in range(24)]
    e.signals([(f"{ids[0]}.1", None, None, "viewed", None), (f"{ids[1]}.1", None, None, "delivered", None)]).wait()
    e.advance(600)  # step 2 fires for the rest
    e.signals([(f"{ids[2]}.1", None, None, "clicked", None), (f"{ids[3]}.2", None, None, "failed", None),
               (None, ids[4], "push", "clicked", None)]).wait()
    e.cancel_send(ids[5]).wait()
    e.inbox("u1", 3, None).wait()  # listing marks delivered
    return ids


def state(e: Engine, ids: list[str]) -> dict[str, Any]:
    # Inboxes first: listing marks messages delivered, which the rest shows.
    inboxes = [[m["messageId"] for m in e.inbox(f"u{i}", 50, None).wait()["messages"]] for i in range(4)]
    return {
        "inboxes": inboxes,
        "sends": [e.get_send(i).wait() for i in ids],
        "metrics": e.template_metrics("chain").wait(),
        "recipients": [e.get_recipient(f"u{i}").wait() for i in range(4)],
        "templates": [tv.view() for tv in e.list_templates()],
        "versions": e.templates.version("chain", 1).view(),
        "clock": e.clock.now(),
    }


def test_everything_acknowledged_survives_a_crash_without_any_snapshot(node: Node) -> None:
    ids = populate(node.engine)  # type: ignore[arg-type]
    before = state(node.engine, ids)  # type: ignore[arg-type]
    after = state(node.restart(), ids)
    assert after == before
    assert node.result.snapshot_position is None and node.result.replayed > 0


def test_a_snapshot_plus_the_journal_after_it_restores_the_same_state(node: Node) -> None:
    e = node.engine
    assert e is not None
    ids = populate(e)
    node.coordinator.take()
    more = [e.send("chain", "u2", {"order": {"id": 99}})[0].wait()["id"]]
    e.advance(3600)
    e.signals([(f"{more[0]}.1", None, None, "viewed", None)]).wait()
    before = state(e, ids + more)
    e2 = node.restart()
    assert node.result.snapshot_position is not None
    assert state(e2, ids + more) == before


def test_a_snapshot_taken_while_traffic_continues_matches_the_state_at_its_position(
        node: Node, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shard_snapshot, "SLICE", 2)  # many slices, traffic between them
    e = node.engine
    assert e is not None
    ids = populate(e)
    # Drive the slices by hand, changing sends, recipients and inboxes between
    # them, so that copy-on-write has work to do.
    position = node.journal.position()
    from cascade.storage.codec import pack
    begun = [e.router.ask(i, "snapshot_begin", (str(node.root / "snapshots"), position, i + 1, _writer(), pack)).wait()
             for i in range(len(e.states))]
    e.signals([(f"{ids[6]}.1", None, None, "viewed", None), (f"{ids[7]}.2", None, None, "clicked", None)]).wait()
    e.cancel_send(ids[8]).wait()
    e.put_recipient("u3", {"email": "new@x.io"}).wait()
    late = e.send("chain", "u3", {"order": {"id": 7}})[0].wait()["id"]
    e.inbox("u2", 50, None).wait()
    e.advance(3600)
    while not all(e.router.ask(i, "snapshot_slice", None).wait() for i in range(len(e.states))):
        e.signals([(f"{ids[9]}.1", None, None, "clicked", None)]).wait()
    for snap in begun:
        snap.result()
    e.put_template("chain", CHAIN).wait()  # front file: write it last so the set is complete
    from cascade.storage import write_snapshot
    write_snapshot(str(node.root / "snapshots"), 0, {"journal_position": position, "shard_position": position,
                                                     "kind": "front", "shards": len(e.states)}, e.front_records())
    before = state(e, ids + [late])
    e2 = node.restart()
    assert node.result.snapshot_position == position
    assert state(e2, ids + [late]) == before


def test_a_snapshot_begun_in_the_same_batch_as_a_change_is_not_replayed_over_twice(node: Node) -> None:
    """A shard's snapshot stands at a journal position; what its batch did
    before the snapshot began must be journaled before that position, or
    recovery applies it a second time over the snapshot (double counts)."""
    e = node.engine
    assert e is not None
    ids = populate(e)
    position = node.journal.position()
    from cascade.storage.codec import pack
    shard = e.shard_of_key(int(ids[6][4:], 16))

    async def same_batch() -> Any:
        # Issued in one loop iteration: one message, one batch on the shard.
        signalled = e.signals([(f"{ids[6]}.1", None, None, "viewed", None)])
        begun = e.router.ask(shard, "snapshot_begin",
                             (str(node.root / "snapshots"), position, shard + 1, _writer(), pack))
        await signalled
        return await begun

    snap = asyncio.run(same_batch())
    for i in range(len(e.states)):
        if i != shard:
            e.router.ask(i, "snapshot_begin", (str(node.root / "snapshots"), position, i + 1, _writer(), pack)).wait()
    while not all(e.router.ask(i, "snapshot_slice", None).wait() for i in range(len(e.states))):
        pass
    snap.result()
    from cascade.storage import write_snapshot
    write_snapshot(str(node.root / "snapshots"), 0, {"journal_position": position, "shard_position": position,
                                                     "kind": "front", "shards": len(e.states)}, e.front_records())
    before = state(e, ids)
    e2 = node.restart()
    assert node.result.snapshot_position == position
    assert state(e2, ids) == before


def _writer() -> Any:
    from cascade.storage import write_snapshot
    return write_snapshot


def test_timers_resume_on_their_original_deadlines(node: Node) -> None:
    e = node.engine
    assert e is not None
    e.put_template("chain", CHAIN).wait()
    e.put_recipient("u", {"pushTokens": ["t"], "email": "u@x.io"}).wait()
    sid = e.send("chain", "u")[0].wait()["id"]
    e.advance(300)
    e2 = node.restart()
    assert e2.clock.now() == T0 + 300  # the manual clock resumed where it was
    e2.advance(299)
    assert [s["status"] for s in e2.get_send(sid).wait()["steps"]] == ["waiting", "pending", "pending"]
    e2.advance(1)
    view = e2.get_send(sid).wait()
    assert [s["status"] for s in view["steps"]] == ["fired", "waiting", "pending"]
    assert view["steps"][1]["firedAt"] == view["steps"][0]["deadline"]


class SilentProvider:
    """An asynchronous provider whose answers never come back (the process dies first)."""

    synchronous = False
    name = "silent"

    def __init__(self) -> None:
        self.seen: list[str] = []

    async def deliver(self, message: OutgoingMessage) -> DeliveryOutcome:
        self.seen.append(message.message_id)
        await asyncio.sleep(3600)
        return DeliveryOutcome(True)

    async def close(self) -> None:
        return None


def test_a_message_no_provider_answered_is_handed_over_again_after_recovery(tmp_path: Path) -> None:
    handed: list[str] = []
    node = Node("file", tmp_path, {"push": MemoryProvider("push"), "email": MemoryProvider("email"),
                                   "sms": MemoryProvider("sms")}, answer_wait_s=0)  # the answer never comes
    e = node.open()
    e.put_template("chain", CHAIN).wait()
    e.put_recipient("u", {"pushTokens": ["t"]}).wait()
    sid = e.send("chain", "u")[0].wait()["id"]
    # Make push asynchronous and silent: the shard hands it over and hears nothing.
    for st in e.states:
        st.providers = {**st.providers, "push": SilentProvider()}
        st.submit_jobs = lambda jobs, on_results: handed.extend(m.message_id for _, m, _ in jobs)
    e.advance(600)
    assert handed == [f"{sid}.2"]
    e2 = node.restart()
    assert e2.redrive().wait() == 1
    assert [m.message_id for m in node.providers["push"].messages] == [f"{sid}.2"]  # same message id
    assert e2.get_send(sid).wait()["steps"][1]["status"] == "waiting"
    node.crash()


def test_a_corrupt_snapshot_falls_back_to_the_set_before(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    node = Node("file", tmp_path)
    e = node.open()
    ids = populate(e)
    node.coordinator.take()
    extra = e.send("chain", "u0")[0].wait()["id"]
    node.coordinator.take()
    before = state(e, ids + [extra])
    newest = list_snapshots(tmp_path / "snapshots")[0]
    path = newest.paths[1]
    data = bytearray(Path(path).read_bytes())
    data[len(data) // 2] ^= 0xFF
    Path(path).write_bytes(bytes(data))
    e2 = node.restart()
    assert node.result.skipped_sets == [newest.journal_position]
    assert "UNUSABLE" in caplog.text
    assert state(e2, ids + [extra]) == before
    node.crash()


def test_recovery_refuses_a_snapshot_of_an_unknown_format_version_and_names_it(tmp_path: Path) -> None:
    node = Node("file", tmp_path)
    e = node.open()
    populate(e)
    node.coordinator.take()
    node.crash()
    from cascade.storage import codec
    newest = list_snapshots(tmp_path / "snapshots")[0]
    header = codec.make_header(0, newest.journal_position, {}, 0.0)
    header["version"] = 99
    rest = Path(newest.paths[0]).read_bytes()
    length = int.from_bytes(rest[:4], "little")
    Path(newest.paths[0]).write_bytes(codec.encode_record(header) + rest[8 + length:])
    with pytest.raises(RecoveryRefused, match="version 99"):
        node.open()


def test_the_journal_before_the_oldest_kept_snapshot_is_deleted(tmp_path: Path) -> None:
    node = Node("file", tmp_path)
    e = node.open()
    e.put_template("chain", CHAIN).wait()
    for round_ in range(4):
        for i in range(20):
            e.send("chain", f"r{round_}-{i}")[0].wait()
        node.journal.rotate()
        node.coordinator.take()
    segments = sorted(os.listdir(tmp_path / "journal"))
    assert len(list_snapshots(tmp_path / "snapshots")) == 2  # keep=2
    assert len([s for s in segments if s.endswith(".log")]) < 5
    e2 = node.restart()
    assert e2.template_metrics("chain").wait()["sends"]["started"] == 80
    node.crash()
