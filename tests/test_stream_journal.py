"""The stream journal against real nats-server processes: the journal behaviour
suite of test_journal.py, then what a stream adds: takeover and fencing,
quorum acknowledgement on a 3-node cluster, purging, reopening after a
server restart."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from nats_servers import PausingProxy, nats_cluster, nats_server, wait_for  # fixtures, used by name
from test_journal import (  # the shared behaviour suite, run here against StreamJournal
    batch,
    test_append_after_close_is_refused,
    test_concurrent_appends_from_many_threads_are_all_replayed_at_their_positions,
    test_on_durable_fires_exactly_once_per_append_in_append_order,
    test_reopening_after_close_continues_positions_and_keeps_records,
    test_replay_gives_every_record_in_append_order_with_its_position,
    test_replay_while_open_sees_every_acknowledged_record,
    test_stats_count_appends_records_and_bytes,
)

pytestmark = pytest.mark.timeout(60)

Opener = Callable[..., Any]


@pytest.fixture
def client(nats_server: Any) -> Iterator[Any]:
    from cascade.cluster.client import NatsThread

    with NatsThread(nats_server.urls, name="test") as nats_client:
        yield nats_client


@pytest.fixture
def open_journal(client: Any) -> Iterator[Opener]:
    """Opens partition 0 as a new owner each time (epochs 1, 2, ...); closes whatever is left open."""
    from cascade.cluster.stream_journal import StreamJournal

    opened: list[Any] = []

    def opener(node: str = "n1", **options: Any) -> Any:
        journal = StreamJournal(client, 0, node, len(opened) + 1, **options)
        opened.append(journal)
        return journal

    yield opener
    for journal in opened:
        journal.close()


def durable(journal: Any, records: list[Any]) -> int:
    done = threading.Event()
    position = journal.append(records, done.set)
    assert done.wait(10), "append not acknowledged"
    return int(position)


# -- what a stream does where the file journal has segments --------------------


def test_rotate_ends_a_message_and_positions_run_on(open_journal: Opener) -> None:
    journal = open_journal()
    journal.append(batch("a", 3))
    assert journal.rotate() == 3
    assert journal.rotate() == 3  # nothing since: no empty message
    journal.append(batch("b", 2))
    assert journal.rotate() == 5
    assert journal.append(batch("c", 1)) == 6
    journal.close()
    assert journal.stats().segments == 4  # the takeover record and three messages
    assert [p for p, _ in journal.replay()] == [1, 2, 3, 4, 5, 6]
    assert list(journal.replay(after=4)) == [(5, ("b", 1)), (6, ("c", 0))]


def test_drop_before_purges_only_messages_entirely_at_or_before_it(
    open_journal: Opener, caplog: pytest.LogCaptureFixture
) -> None:
    journal = open_journal()
    for tag in "abc":
        journal.append(batch(tag, 10))
        journal.rotate()
    durable(journal, batch("d", 5))  # messages hold 1-10, 11-20, 21-30, 31-35
    journal.drop_before(19)
    assert [p for p, _ in journal.replay(after=19)] == list(range(20, 36))
    assert next(p for p, _ in journal.replay()) == 11
    assert "records up to 10 were dropped" in caplog.text
    journal.drop_before(1000)  # the last message always stays: it carries the position
    assert [p for p, _ in journal.replay()] == list(range(31, 36))
    assert journal.stats().segments == 2  # the last journal message, and the takeover record: epochs stay
    journal.close()
    reopened = open_journal()
    assert reopened.position() == 35
    assert reopened.append(batch("e", 1)) == 36
    assert [p for p, _ in reopened.replay(after=30)] == list(range(31, 37))


def test_an_append_over_the_message_limit_is_refused_before_it_is_queued(open_journal: Opener) -> None:
    journal = open_journal(max_message_bytes=1000)
    with pytest.raises(ValueError, match="exceeds the 1000-byte message limit"):
        journal.append([b"x" * 2000])
    assert journal.append([b"x" * 100]) == 1


# -- ownership -----------------------------------------------------------------


def test_a_takeover_fences_the_old_owner_whose_next_append_is_refused_by_jetstream(client: Any) -> None:
    from cascade.cluster.stream_journal import Fenced, StreamJournal

    lost: list[Exception] = []
    fenced = threading.Event()

    def on_lost(exc: Exception) -> None:
        lost.append(exc)
        fenced.set()

    a = StreamJournal(client, 7, "a", 1, on_lost=on_lost)
    durable(a, batch("a", 3))
    b = StreamJournal(client, 7, "b", 2)
    assert (b.takeover.node, b.takeover.epoch, b.position()) == ("b", 2, 3)
    assert [(t.node, t.epoch) for t in b.takeovers()] == [("a", 1), ("b", 2)]
    refused = threading.Event()
    a.append([("a", "late")], refused.set)  # queued; JetStream refuses it: the stream moved on
    assert fenced.wait(10)
    assert isinstance(lost[0], Fenced) and (lost[0].node, lost[0].epoch) == ("a", 1)
    assert not refused.is_set()  # never acknowledged
    with pytest.raises(Fenced, match="another owner took over"):
        a.append([("a", "later")])
    assert durable(b, batch("b", 2)) == 5
    assert [r for _, r in b.replay()] == [*batch("a", 3), *batch("b", 2)]
    assert len(lost) == 1
    a.close()
    b.close()


def test_the_lease_epoch_fences_a_paused_owner_once_another_node_took_the_partition(client: Any) -> None:
    """The composition the owner loop will use: lease -> epoch -> journal."""
    from cascade.cluster.lease import Leases
    from cascade.cluster.stream_journal import Fenced, StreamJournal

    clock = [0.0]
    leases_a = client.run(Leases(client.js, "owners", clock=lambda: clock[0]).open(), 10)
    leases_b = client.run(Leases(client.js, "owners", clock=lambda: clock[0]).open(), 10)
    lease_a = client.run(leases_a.acquire(9, "a", 5.0), 10)
    a = StreamJournal(client, 9, "a", lease_a.epoch)
    durable(a, batch("a", 2))
    assert client.run(leases_b.acquire(9, "b", 5.0), 10) is None  # held: b starts counting
    clock[0] += 5.0  # a is paused (no renewal) for a whole lease
    lease_b = client.run(leases_b.acquire(9, "b", 5.0), 10)
    assert lease_b.epoch == lease_a.epoch + 1
    b = StreamJournal(client, 9, "b", lease_b.epoch)
    a.append([("a", "after pause")])
    wait_for(lambda: a.failure is not None, what="a fenced")
    with pytest.raises(Fenced):
        a.append([("a", "again")])
    assert durable(b, batch("b", 1)) == 3
    assert [r for _, r in b.replay()] == [*batch("a", 2), ("b", 0)]
    a.close()
    b.close()


def test_a_takeover_under_concurrent_appends_loses_nothing_acknowledged_and_keeps_order(client: Any) -> None:
    from cascade.cluster.stream_journal import Fenced, StreamJournal

    a = StreamJournal(client, 8, "a", 1)
    acked: set[tuple[int, int]] = set()
    lock = threading.Lock()
    stop = threading.Event()

    def shard(n: int) -> None:
        for k in range(100_000):
            if stop.is_set():
                return
            try:
                a.append([(n, k)], lambda n=n, k=k: (lock.acquire(), acked.add((n, k)), lock.release()))
            except Fenced:
                return

    threads = [threading.Thread(target=shard, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    wait_for(lambda: len(acked) > 500, what="appends acknowledged before the takeover")
    b = StreamJournal(client, 8, "b", 2)
    wait_for(lambda: a.failure is not None, what="a fenced")
    stop.set()
    for t in threads:
        t.join(10)
    assert not any(t.is_alive() for t in threads)
    replayed = [r for _, r in b.replay()]
    with lock:
        assert acked <= set(replayed)  # every acknowledged append survives the takeover
    for n in range(4):  # and each shard's records are a prefix of what it appended, in order
        mine = [k for m, k in replayed if m == n]
        assert mine == list(range(len(mine)))
    assert len(replayed) == b.recovery_report.position
    a.close()
    b.close()


def test_racing_takeovers_leave_epochs_growing_and_the_lower_one_fenced(client: Any) -> None:
    from cascade.cluster.stream_journal import Fenced, StreamJournal

    StreamJournal(client, 11, "a", 1).close()
    top = 1
    for _ in range(10):
        opened: dict[int, Any] = {}
        start = threading.Barrier(2, timeout=10)

        def take(epoch: int, node: str, start: threading.Barrier = start, opened: dict[int, Any] = opened) -> None:
            start.wait()  # both read the stream before either publishes, most of the time
            with contextlib.suppress(Fenced):  # refused on open: the higher epoch was there first
                opened[epoch] = StreamJournal(client, 11, node, epoch)

        racers = [threading.Thread(target=take, args=(top + 1, "b")),
                  threading.Thread(target=take, args=(top + 2, "c"))]
        for t in racers:
            t.start()
        for t in racers:
            t.join(30)
        winner = opened[top + 2]
        epochs = [t.epoch for t in winner.takeovers()]
        assert epochs == sorted(epochs) and epochs[-1] == top + 2
        if top + 1 in opened:  # it opened first, and the higher epoch fenced it
            loser = opened[top + 1]
            loser.append([("late",)])
            wait_for(lambda loser=loser: isinstance(loser.failure, Fenced), what="the lower epoch fenced")
            loser.close()
        winner.close()
        top += 2


def test_opening_with_an_epoch_not_above_the_streams_is_refused(client: Any) -> None:
    from cascade.cluster.stream_journal import Fenced, StreamJournal

    StreamJournal(client, 3, "a", 5).close()
    for stale in (5, 4):
        with pytest.raises(Fenced, match="already carries epoch 5"):
            StreamJournal(client, 3, "b", stale)
    assert StreamJournal(client, 3, "b", 6).takeover.epoch == 6


def test_a_publish_whose_ack_was_lost_is_acknowledged_by_its_retry_not_taken_for_fencing(
    nats_server: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """JetStream checks the expected sequence before its duplicate window, so the
    retry of a publish that was stored is refused; the journal finds its own
    message at that sequence and carries on."""
    from cascade.cluster.client import NatsThread
    from cascade.cluster.stream_journal import StreamJournal

    proxy = PausingProxy(nats_server.servers[0].port)
    try:
        with NatsThread([proxy.url], name="owner") as owner, NatsThread(nats_server.urls, name="observer") as observer:
            journal = StreamJournal(owner, 5, "a", 1, publish_timeout_s=0.3)
            durable(journal, batch("a", 2))

            def last_seq() -> int:
                return int(observer.run(observer.js.stream_info(journal.stream), 5).state.last_seq)

            stored_before = last_seq()
            proxy.pause()
            acked = threading.Event()
            journal.append(batch("b", 2), acked.set)
            wait_for(lambda: last_seq() == stored_before + 1, what="the publish stored")
            wait_for(lambda: "retrying" in caplog.text, what="a retry after the lost ack")
            assert not acked.is_set()
            proxy.resume()
            assert acked.wait(10)
            assert journal.failure is None
            assert durable(journal, batch("c", 1)) == 5
            assert [r for _, r in journal.replay()] == [*batch("a", 2), *batch("b", 2), ("c", 0)]
            journal.close()
    finally:
        proxy.close()


# -- replicas --------------------------------------------------------------------


def test_with_three_replicas_appends_survive_losing_the_stream_leader(nats_cluster: Any) -> None:
    from cascade.cluster.client import NatsThread
    from cascade.cluster.stream_journal import StreamJournal

    with NatsThread(nats_cluster.urls, name="owner") as owner:
        journal = StreamJournal(owner, 0, "n1", 1, replicas=3)
        assert durable(journal, batch("before", 50)) == 50
        info = owner.run(owner.js.stream_info(journal.stream), 10)
        assert info.config.num_replicas == 3 and len(info.cluster.replicas) == 2
        leader = next(s for s in nats_cluster.servers if s.name == info.cluster.leader)
        leader.kill()  # a crash: the acknowledged records are on the two others
        began = time.monotonic()
        assert durable(journal, batch("after", 50)) == 100  # retried until a new leader answers
        failover = time.monotonic() - began
        journal.close()
    survivor = next(s for s in nats_cluster.servers if s.alive)
    with NatsThread([survivor.url], name="reader") as reader:
        successor = StreamJournal(reader, 0, "n2", 2, replicas=3)
        assert [r for _, r in successor.replay()] == [*batch("before", 50), *batch("after", 50)]
        successor.close()
    assert failover < 20


def test_records_survive_a_server_restart_and_a_new_connection(nats_server: Any) -> None:
    from cascade.cluster.client import NatsThread
    from cascade.cluster.stream_journal import StreamJournal

    with NatsThread(nats_server.urls) as first:
        journal = StreamJournal(first, 1, "n1", 1)
        durable(journal, batch("a", 4))
        journal.close()
    nats_server.stop()
    nats_server.start()
    with NatsThread(nats_server.urls) as second:
        reopened = StreamJournal(second, 1, "n1", 2)
        assert reopened.position() == 4 and reopened.recovery_report.clean
        assert reopened.append(batch("b", 1)) == 5
        reopened.close()
        assert [r for _, r in reopened.replay()] == [*batch("a", 4), ("b", 0)]

