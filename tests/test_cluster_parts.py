"""The cluster's pure parts: slot ranges and rendezvous ownership, the wire
frames' errors, the [cluster] settings, and windows held for forwarded calls."""

from __future__ import annotations

import pytest

from cascade.config import ConfigError, load_settings
from cascade.domain.errors import Conflict, NotFound, Overloaded, TemplateInvalid
from cascade.domain.ids import SLOTS, new_send_key, slot_of
from cascade.engine.arrivals import InFlight


def test_partitions_are_contiguous_slot_ranges_covering_every_slot() -> None:
    from cascade.cluster.assign import partition_of_key, partition_of_recipient, partition_of_slot

    seen = [partition_of_slot(s, 8) for s in range(SLOTS)]
    assert seen == sorted(seen) and set(seen) == set(range(8))
    assert [seen.count(p) for p in range(8)] == [SLOTS // 8] * 8
    rid = "user-42"
    assert partition_of_key(new_send_key(slot_of(rid)), 8) == partition_of_recipient(rid, 8)


@pytest.mark.parametrize("partitions", [8, 16, 64])
def test_shares_differ_by_at_most_one_and_a_join_moves_a_few_partitions_mostly_to_the_joiner(partitions: int) -> None:
    from cascade.cluster.assign import assignment, preferred_owner, share

    nodes = ["n1", "n2", "n3"]
    before = assignment(nodes, partitions)
    counts = [list(before.values()).count(n) for n in nodes]
    assert sorted(before) == list(range(partitions)) and max(counts) - min(counts) <= 1
    after = assignment(nodes + ["n4"], partitions)
    moved = [p for p in range(partitions) if before[p] != after[p]]
    to_joiner = [p for p in moved if after[p] == "n4"]
    assert len(to_joiner) == list(after.values()).count("n4") >= partitions // 4
    assert len(moved) <= 2 * len(to_joiner)  # a join is not a reshuffle
    assert set().union(*(share(n, nodes, partitions) for n in nodes)) == set(range(partitions))
    assert all(preferred_owner(p, nodes, partitions) == before[p] for p in range(partitions))
    assert assignment([], partitions) == {}


@pytest.mark.parametrize("error", [NotFound("send x does not exist"), Conflict("taken", [("$.a", "why")]),
                                   TemplateInvalid("bad", [("$.channels[0]", "no")]), Overloaded("busy", 7)])
def test_errors_cross_the_wire_as_the_same_class_message_and_details(error: Exception) -> None:
    from cascade.cluster import wire

    frame = wire.decode(wire.encode(wire.error_frame(error)))
    with pytest.raises(type(error)) as raised:
        wire.raise_error(frame)
    assert str(raised.value) == str(error)
    assert raised.value.details == error.details  # type: ignore[attr-defined]
    if isinstance(error, Overloaded):
        assert raised.value.retry_after_s == 7  # type: ignore[attr-defined]


def test_not_owner_answers_are_told_apart_from_errors() -> None:
    from cascade.cluster import wire

    frame = wire.decode(wire.encode(wire.error_frame(wire.NotOwner("moved"))))
    assert frame[0] == wire.NOT_OWNER
    with pytest.raises(wire.NotOwner):
        wire.raise_error(frame)


def test_cluster_settings_are_checked_and_named() -> None:
    env = {"CASCADE_CLUSTER_NATS": "nats://127.0.0.1:4222,nats://127.0.0.1:4223", "CASCADE_CLUSTER_NODE": "n1"}
    settings = load_settings(environ=env)
    assert settings.cluster.enabled and settings.cluster.nats == ["nats://127.0.0.1:4222", "nats://127.0.0.1:4223"]
    assert not load_settings(environ={}).cluster.enabled
    for extra, named in [({"CASCADE_CLUSTER_NODE": ""}, "cluster.node"),
                         ({"CASCADE_CLUSTER_PARTITIONS": "0"}, "cluster.partitions"),
                         ({"CASCADE_CLUSTER_REPLICAS": "2"}, "cluster.replicas"),
                         ({"CASCADE_CLUSTER_NATS": "localhost"}, "cluster.nats"),
                         ({"CASCADE_CLOCK_MODE": "manual"}, "clock.mode")]:
        with pytest.raises(ConfigError, match=named.replace(".", r"\.")):
            load_settings(environ={**env, **extra})


def test_a_forwarded_signal_holds_the_watermark_at_its_own_arrival_whatever_the_order() -> None:
    in_flight = InFlight()
    local = in_flight.enter(100.0)
    assert in_flight.oldest() == 100.0
    token = in_flight.enter_forwarded(99.5)  # stamped earlier on another node, arriving later here
    assert in_flight.oldest() == 99.5
    in_flight.leave(local)
    assert in_flight.oldest() == 99.5
    in_flight.leave_forwarded(token)
    assert in_flight.oldest() is None


def test_a_hold_keeps_the_watermark_behind_the_clock() -> None:
    now = [50.0]
    in_flight = InFlight(hold=lambda: now[0] - 0.05)
    assert in_flight.oldest() == pytest.approx(49.95)
    entry = in_flight.enter(49.0)
    assert in_flight.oldest() == 49.0
    in_flight.leave(entry)
    now[0] = 60.0
    assert in_flight.oldest() == pytest.approx(59.95)


def test_the_forward_allowance_follows_the_transits_seen_and_is_nothing_without_other_nodes() -> None:
    from cascade.cluster.allowance import ForwardAllowance

    now = [100.0]
    others = [False]
    allowance = ForwardAllowance(lambda: others[0], floor_s=0.01, ceiling_s=1.0, monotonic=lambda: now[0])
    assert allowance.seconds() == 0.0  # alone: nothing can be on its way
    others[0] = True
    assert allowance.seconds() == 0.01
    allowance.observe(0.004)
    assert allowance.seconds() == 0.01  # twice 4 ms is under the floor
    allowance.observe(0.2)
    assert allowance.seconds() == pytest.approx(0.4) and allowance.late == 1  # 0.2 s came after the 10 ms it met
    now[0] += 1.5
    assert allowance.seconds() == pytest.approx(0.4)  # seen within the last two seconds
    now[0] += 1.0
    assert allowance.seconds() == 0.01
    allowance.observe(5.0)
    assert allowance.seconds() == 1.0  # the ceiling: a stalled sender cannot stop every window
