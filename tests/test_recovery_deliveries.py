"""After a crash, each message is handed to its provider once more at most:
the ones whose answer never came are re-driven, and a timer that fell due
while the server was down fires live at start and posts its own message
once, not a second time through the re-drive."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cascade.delivery.providers.base import OutgoingMessage
from cascade.durability.recovery import recover
from cascade.engine import Engine, EngineConfig, ManualClock, RealClock
from cascade.storage import FileJournal

CHAIN = {"channels": [
    {"channel": "inapp", "stopCondition": "viewed", "waitMinutes": 5, "content": {"body": "hi"}},
    {"channel": "push", "stopCondition": "clicked", "waitMinutes": 60, "content": {"body": "still there?"}},
    {"channel": "email", "content": {"subject": "last call"}},
], "config": {"sequenceEnabled": True}}


class Handed:
    """An asynchronous provider's dispatcher that records what it is handed and never answers."""

    def __init__(self) -> None:
        self.message_ids: list[str] = []

    def __call__(self, jobs: list[tuple[str, OutgoingMessage, Any]], on_results: Any) -> None:
        self.message_ids += [m.message_id for _, m, _ in jobs]


class _Silent:
    synchronous = False


def open_engine(root: Path, clock: Any, handed: Handed) -> tuple[Engine, FileJournal]:
    journal = FileJournal(root / "journal", fsync="batch")
    e = Engine(clock, {"push": _Silent(), "email": _Silent()},  # type: ignore[dict-item]
               EngineConfig(shards=2, gc_freeze_interval_s=0, answer_wait_s=0), submit_jobs=handed, journal=journal)
    recover(e, str(root / "snapshots"), journal)
    return e.start(), journal


def test_a_timer_that_fell_due_while_down_posts_its_message_once(tmp_path: Path) -> None:
    before = Handed()
    past = RealClock().now() - 3600  # the first life was an hour ago
    e, journal = open_engine(tmp_path, ManualClock(past), before)
    e.put_template("chain", CHAIN).wait()
    e.put_recipient("u", {"pushTokens": ["t"], "email": "u@example.com"}).wait()
    sid = e.send("chain", "u")[0].wait()["id"]
    e.stop()
    journal.close()
    assert before.message_ids == []  # in-app only so far; push was due 5 minutes later

    after = Handed()
    e2, journal2 = open_engine(tmp_path, RealClock(), after)
    try:
        e2.stats().wait()  # a batch has run: the overdue window has fired push (live, handed over) ...
        assert after.message_ids == [f"{sid}.2"]
        assert e2.redrive().wait() == 0  # ... and the re-drive does not post it again: it was never handed before
        assert after.message_ids == [f"{sid}.2"]
    finally:
        e2.stop()
        journal2.close()


def test_a_message_handed_over_before_the_crash_is_handed_over_again_once(tmp_path: Path) -> None:
    before = Handed()
    e, journal = open_engine(tmp_path, ManualClock(RealClock().now()), before)
    e.put_template("chain", CHAIN).wait()
    e.put_recipient("u", {"pushTokens": ["t"], "email": "u@example.com"}).wait()
    sid = e.send("chain", "u")[0].wait()["id"]
    e.advance(300)  # push fires and is handed over; its answer never comes
    assert before.message_ids == [f"{sid}.2"]
    e.stop()
    journal.close()

    after = Handed()
    e2, journal2 = open_engine(tmp_path, ManualClock(0), after)
    try:
        assert e2.redrive().wait() == 1
        assert e2.redrive().wait() == 0  # re-driven once, not on every call
        assert after.message_ids == [f"{sid}.2"]
    finally:
        e2.stop()
        journal2.close()
