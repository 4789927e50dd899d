"""API rule 11 on the engine: a window is judged by what had reached the
server by its deadline. Requests in flight and commands still queued hold
the shards' low watermark back; a timer fires late rather than wrongly.
And the mailboxes that feed the watermark count every command, so their
depth never drifts below zero on an idle real-clock engine."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from cascade.domain.errors import Overloaded
from cascade.engine import Engine, EngineConfig, MemoryProvider, RealClock
from cascade.engine.arrivals import InFlight
from cascade.storage.journal import FileJournal

T0 = 1_800_000_000.0
CHAIN = {"channels": [
    {"channel": "inapp", "stopCondition": "viewed", "waitMinutes": 5, "content": {"body": "hi"}},
    {"channel": "push", "content": {"body": "still there?"}},
], "config": {"sequenceEnabled": True}}


class SteppedClock:
    """A clock in "real" mode (so the engine's ticker drives timers) that
    the test moves by hand."""

    mode = "real"

    def __init__(self, start: float) -> None:
        self.t = start

    def now(self) -> float:
        return self.t


@pytest.fixture
def clock() -> SteppedClock:
    return SteppedClock(T0)


@pytest.fixture
def push() -> MemoryProvider:
    return MemoryProvider("push")


@pytest.fixture
def engine(clock: SteppedClock, push: MemoryProvider) -> Iterator[Engine]:
    e = Engine(clock, {"push": push}, EngineConfig(shards=1, tick_interval_s=0.005, gc_freeze_interval_s=0)).start()
    e.put_template("chain", CHAIN).wait()
    e.put_recipient("u", {"pushTokens": ["t"]}).wait()
    yield e
    e.stop()


def settle(engine: Engine) -> None:
    """Two round trips through every shard: every batch that ends in
    between has judged its windows against the clock as it is now."""
    for _ in range(2):
        engine.stats().wait()


def status(engine: Engine, sid: str) -> list[str]:
    view: dict[str, Any] = engine.get_send(sid).wait()
    return [view["status"]] + [s["status"] for s in view["steps"]]


def test_a_signal_in_flight_before_the_deadline_holds_the_window_until_it_is_applied(
        engine: Engine, clock: SteppedClock, push: MemoryProvider) -> None:
    sid = engine.send("chain", "u")[0].wait()["id"]
    request = engine.in_flight.enter(T0 + 299)  # reached the server a second before the deadline ...
    clock.t = T0 + 400  # ... and is still being read when the deadline passes
    settle(engine)
    assert status(engine, sid) == ["active", "waiting", "pending"] and push.messages == []
    engine.signals([(f"{sid}.1", None, None, "viewed", None)], arrival=T0 + 299).wait()
    engine.in_flight.leave(request)
    settle(engine)
    assert status(engine, sid) == ["stopped", "stopped", "pending"]
    assert push.messages == []  # the recipient engaged in time: nothing escalated


def test_a_signal_that_arrived_after_the_deadline_does_not_undo_the_escalation(
        engine: Engine, clock: SteppedClock, push: MemoryProvider) -> None:
    sid = engine.send("chain", "u")[0].wait()["id"]
    slow = engine.in_flight.enter(T0 + 100)  # an unrelated request holds the watermark early
    clock.t = T0 + 400
    settle(engine)
    # Arrived after the deadline: the window closes first, then the late view stops the rest (rule 3).
    engine.signals([(f"{sid}.1", None, None, "viewed", None)], arrival=T0 + 301).wait()
    engine.in_flight.leave(slow)
    settle(engine)
    assert [m.message_id for m in push.messages] == [f"{sid}.2"]
    assert status(engine, sid) == ["completed", "fired", "fired"]


def test_a_signal_stamped_before_a_window_that_closed_without_it_is_refused_not_acknowledged(
        engine: Engine, clock: SteppedClock, push: MemoryProvider) -> None:
    # What a cluster owner meets when another node's forward is delayed past its allowance: the window
    # closed (nothing here held it) before a view that reached the other node in time. Acknowledging it
    # would claim an in-time view that did not stop the chain.
    sid = engine.send("chain", "u")[0].wait()["id"]
    clock.t = T0 + 400
    settle(engine)
    assert [m.message_id for m in push.messages] == [f"{sid}.2"]
    with pytest.raises(Overloaded, match=f"{sid}.1: its window closed before this signal"):
        engine.signals([(f"{sid}.1", None, None, "viewed", None)], arrival=T0 + 299).wait()
    with pytest.raises(Overloaded):
        engine.inbox_signal("u", f"{sid}.1", "viewed", arrival=T0 + 299).wait()
    view = engine.get_send(sid).wait()
    assert view["steps"][0]["signals"]["viewed"] is None  # nothing of the refused command was applied
    # A signal that could not have stopped the chain is no claim about the window: taken as ever.
    delivered = engine.signals([(f"{sid}.1", None, None, "delivered", None)], arrival=T0 + 299).wait()
    assert delivered["accepted"] == 1
    # The client's retry reaches the server now: a late view, counted, changing nothing (rule 3).
    late = engine.signals([(f"{sid}.1", None, None, "viewed", None)], arrival=T0 + 400).wait()
    assert late == {"accepted": 1, "duplicates": 0, "errors": []}
    assert status(engine, sid) == ["completed", "fired", "fired"]
    assert [m.message_id for m in push.messages] == [f"{sid}.2"]
    assert sum(s["refused_closed"] for s in engine.stats().wait()) == 2


class HeldDisk:
    """An fdatasync that stays shut until `open` is set: a disk that stalls."""

    def __init__(self) -> None:
        self.open = threading.Event()
        self.holding = threading.Event()

    def __call__(self, fd: int) -> None:
        self.holding.set()
        self.open.wait(30)
        os.fdatasync(fd)


def test_sends_are_shed_while_a_signal_waits_to_be_applied_not_for_the_disk_nor_its_stamp(
        tmp_path: Path, clock: SteppedClock, push: MemoryProvider) -> None:
    disk = HeldDisk()
    # One pending byte: with a commit held in the disk, the shard's next commit waits for space.
    journal = FileJournal(tmp_path / "journal", max_pending_bytes=1, fdatasync=disk)
    e = Engine(clock, {"push": push}, EngineConfig(shards=1, tick_interval_s=0.005, gc_freeze_interval_s=0),
               journal=journal).start()
    try:
        e.put_template("chain", CHAIN)
        e.put_recipient("u", {"pushTokens": ["t"]})
        sids = [e.send("chain", "u") for _ in range(3)]
        disk.open.set()
        sids = [s[0].wait()["id"] for s in sids]  # durable: nothing of them waits in the journal
        disk.open.clear()
        disk.holding.clear()

        def view(n: int, at: float) -> Any:
            e.in_flight.enter(at)  # as the front door does while the request is answered
            return e.signals([(f"{sids[n]}.1", None, None, "viewed", None)], arrival=at)

        first = view(0, T0 + 1)  # applied; its commit sits in the stalled disk
        assert disk.holding.wait(10)
        clock.t = T0 + 2  # a second later (shed_lag_s is 50 ms)
        assert e.behind() is None  # a slow disk is no backlog new sends would add to
        mailbox = e.router.mailboxes[0]
        second = view(1, T0 + 2)  # applied; its commit waits for journal space, holding the shard
        taken = mailbox.posted
        deadline = time.monotonic() + 10
        while mailbox.processed < taken:  # until the shard has taken it (counted once applied)
            assert time.monotonic() < deadline, "the shard never took the second view"
            time.sleep(0.001)
        # Queued behind the shard, stamped early as a front stamps after a loop hiccup: what
        # counts is how long it has waited, not its stamp.
        third = view(2, T0 + 1.5)
        assert e.behind() is None
        clock.t = T0 + 3
        assert e.behind() == "signals are waiting to be applied; retry shortly"
        disk.open.set()
        assert [r.wait()["accepted"] for r in (first, second, third)] == [1, 1, 1]
        assert e.behind() is None
    finally:
        disk.open.set()
        e.stop()
        journal.close()


def test_a_signal_waiting_for_its_journal_commit_does_not_hold_the_other_windows(
        tmp_path: Path, clock: SteppedClock, push: MemoryProvider) -> None:
    disk = HeldDisk()
    journal = FileJournal(tmp_path / "journal", fdatasync=disk)
    e = Engine(clock, {"push": push}, EngineConfig(shards=1, tick_interval_s=0.005, gc_freeze_interval_s=0),
               journal=journal).start()
    try:
        e.put_template("chain", CHAIN)
        e.put_recipient("u", {"pushTokens": ["t"]})
        sent = e.send("chain", "u")
        disk.open.set()
        sid = sent[0].wait()["id"]
        disk.open.clear()
        disk.holding.clear()
        e.in_flight.enter(T0 + 1)  # as the front door does; it answers once the commit is durable
        view = e.signals([(f"{sid}.1", None, None, "viewed", None)], arrival=T0 + 1)
        assert disk.holding.wait(10)  # applied; its commit sits in the stalled disk
        clock.t = T0 + 100
        mailbox = e.router.mailboxes[0]
        ticked = mailbox.processed + 2  # the first tick taken may have read the clock before it moved
        deadline = time.monotonic() + 10
        while mailbox.processed < ticked:
            assert time.monotonic() < deadline, "the shard took no ticks"
            time.sleep(0.005)
        assert e.watermark_lag() < 1.0  # windows are judged up to the clock, not held at the view
        disk.open.set()
        assert view.wait()["accepted"] == 1
    finally:
        disk.open.set()
        e.stop()
        journal.close()


@pytest.mark.parametrize("hand_over", [True, False])
def test_a_request_leaves_the_watermark_to_the_mailboxes_only_on_one_server(hand_over: bool) -> None:
    in_flight = InFlight(hand_over=hand_over)  # False: a cluster node's, whose partitions may be elsewhere
    entry = in_flight.enter(T0)
    in_flight.handed_over()  # its commands are in this process's mailboxes
    assert in_flight.oldest() == (None if hand_over else T0)
    in_flight.leave(entry)  # answered
    assert in_flight.oldest() is None


def test_without_a_signal_the_window_closes_once_the_clock_passes_the_deadline(
        engine: Engine, clock: SteppedClock, push: MemoryProvider) -> None:
    sid = engine.send("chain", "u")[0].wait()["id"]
    clock.t = T0 + 299
    settle(engine)
    assert push.messages == []
    clock.t = T0 + 301
    settle(engine)
    assert [m.message_id for m in push.messages] == [f"{sid}.2"]


def test_an_idle_real_clock_engine_never_reports_a_negative_mailbox_depth() -> None:
    e = Engine(RealClock(), {}, EngineConfig(shards=2, tick_interval_s=0.002, gc_freeze_interval_s=0)).start()
    try:
        depths = []
        while sum(m.processed for m in e.router.mailboxes) < 200:  # ~50 ticks a shard
            depths.append(e.pending())
            e.stats().wait()
        assert min(depths) >= 0
        e.stop()
        assert e.pending() == 0  # everything posted was processed, nothing counted twice
    finally:
        e.stop()
