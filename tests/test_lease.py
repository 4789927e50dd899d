"""Partition leases in a JetStream key-value bucket, against a real nats-server:
compare-and-set on the revision, epochs that only grow, expiry as seen on the
observer's own clock, release, renewal and loss."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from nats_servers import nats_server  # a fixture, used by name

pytestmark = pytest.mark.timeout(30)


class StepClock:
    """A monotonic clock the test moves."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def js(nats_server: Any) -> AsyncIterator[Any]:
    import nats

    nc = await nats.connect(nats_server.urls)
    try:
        yield nc.jetstream()
    finally:
        await nc.close()


async def leases(js: Any, clock: StepClock | None = None) -> Any:
    from cascade.cluster.lease import Leases

    return await Leases(js, "test-leases", clock=clock or time.monotonic).open()


async def test_the_first_acquire_creates_epoch_one_and_others_are_refused_while_it_is_held(js: Any) -> None:
    a, b = await leases(js), await leases(js)
    lease = await a.acquire(3, "a", 5.0)
    assert lease is not None and (lease.partition, lease.node, lease.epoch) == (3, "a", 1)
    assert await b.acquire(3, "b", 5.0) is None
    held = await b.holder(3)
    assert held is not None and (held.node, held.epoch, held.revision) == ("a", 1, lease.revision)
    assert await b.holder(4) is None
    assert (await b.acquire(4, "b", 5.0)).epoch == 1  # partitions are independent


async def test_two_nodes_racing_for_a_free_partition_get_one_lease(js: Any) -> None:
    a, b = await leases(js), await leases(js)
    won = await asyncio.gather(a.acquire(1, "a", 5.0), b.acquire(1, "b", 5.0))
    assert sorted(w is not None for w in won) == [False, True]
    winner = next(w for w in won if w is not None)
    assert (await a.holder(1)).node == winner.node


async def test_renew_keeps_the_epoch_and_a_stale_copy_cannot_renew(js: Any) -> None:
    from cascade.cluster.lease import LeaseLost

    clock = StepClock()
    a = await leases(js, clock)
    first = await a.acquire(0, "a", 5.0)
    clock.now += 2.0
    renewed = await a.renew(first)
    assert (renewed.epoch, renewed.node) == (1, "a")
    assert renewed.revision > first.revision
    assert renewed.valid_until > first.valid_until
    with pytest.raises(LeaseLost, match="changed by another node"):
        await a.renew(first)


async def test_a_lease_expires_only_after_its_observer_saw_it_unchanged_for_lease_s(js: Any) -> None:
    from cascade.cluster.lease import LeaseLost

    clock_a, clock_b = StepClock(), StepClock()
    clock_b.now = 50.0  # the clocks disagree wildly: only intervals on each count
    a, b = await leases(js, clock_a), await leases(js, clock_b)
    lease = await a.acquire(2, "a", 5.0)
    assert lease.valid_until <= clock_a.now + 5.0
    assert await b.acquire(2, "b", 5.0) is None  # b first sees this revision now
    clock_b.now += 4.9
    assert await b.acquire(2, "b", 5.0) is None
    lease = await a.renew(lease)  # a renewal restarts b's count
    clock_b.now += 4.9
    assert await b.acquire(2, "b", 5.0) is None
    clock_b.now += 5.0
    taken = await b.acquire(2, "b", 5.0)
    assert taken is not None and (taken.node, taken.epoch) == ("b", 2)
    with pytest.raises(LeaseLost):
        await a.renew(lease)
    assert (await a.holder(2)).node == "b"


async def test_an_expired_lease_is_taken_over_in_real_time_after_the_holders_validity_ended(js: Any) -> None:
    a, b = await leases(js), await leases(js)
    lease = await a.acquire(6, "a", 0.3)
    began = time.monotonic()
    deadline = began + 10
    while (taken := await b.acquire(6, "b", 0.3)) is None:
        assert time.monotonic() < deadline, "lease never expired"
        await asyncio.sleep(0.02)  # polling interval of a bounded wait
    assert taken.epoch == 2
    assert time.monotonic() - began >= 0.3
    assert lease.valid_until <= time.monotonic()  # a's own view ended before b took over


async def test_release_frees_the_partition_at_once_and_epochs_keep_growing(js: Any) -> None:
    a, b = await leases(js), await leases(js)
    lease = await a.acquire(5, "a", 60.0)
    await a.release(lease)
    assert await b.holder(5) is None
    taken = await b.acquire(5, "b", 60.0)
    assert taken is not None and taken.epoch == 2  # not 1: the released record kept the epoch


async def test_a_restarted_node_takes_its_own_lease_over_with_a_new_epoch(js: Any) -> None:
    from cascade.cluster.lease import LeaseLost

    before, after = await leases(js), await leases(js)
    old = await before.acquire(7, "a", 60.0)
    new = await after.acquire(7, "a", 60.0)  # the old process may still run: it must be fenced
    assert new is not None and new.epoch == old.epoch + 1
    with pytest.raises(LeaseLost, match="already taken over"):
        await before.release(old)
