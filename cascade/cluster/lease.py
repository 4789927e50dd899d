"""Partition leases in a JetStream key-value bucket; the epoch fences owners.

Key `p<N>` holds one lease record (JSON, so `nats kv get` shows it):
`{"node", "epoch", "lease_s", "expires_at"}`. Every change is a
compare-and-set on the key's revision, so of two nodes racing for a
partition exactly one wins. `acquire` creates the key (epoch 1) or takes an
expired, released or own-node lease over with epoch + 1; `renew` keeps the
epoch; `release` writes a record with no node and the same epoch (deleting
the key would restart epochs at 1). The epoch is an explicit counter, not
the KV revision, because renewals move the revision every few seconds while
ownership has not changed; the revision is only the CAS token.

Clock skew: no wall clocks are compared across machines. The holder counts
its lease from *before* the write that took or renewed it, on its own
monotonic clock (`Lease.valid_until`, ending `margin_s` early for clock rate
drift). Another node calls a lease expired only once it has seen the same
revision unchanged for `lease_s` on *its* monotonic clock, counted from when
it first read that revision, which is after the write. Both intervals have
the same length and the observer's starts later, so a holder's validity ends
before anyone can take over, whatever the clocks read. The cost: a node
that has just started waits a whole `lease_s` before taking over a lease it
has never seen renewed. (`expires_at` is the holder's wall clock, for
people and admin views only; the stream journal's expected-sequence check,
not the lease, is what refuses a paused or deposed owner's writes.)

A node acquiring a partition its own name still holds (a restarted process)
takes it over with a new epoch: the old process may still be running.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

from nats.js import JetStreamContext
from nats.js.errors import BucketNotFoundError, KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from .transient import retried

__all__ = ["Lease", "LeaseLost", "Leases"]


class LeaseLost(Exception):
    """The lease changed under its holder (renewed or released by another): stop owning the partition."""


@dataclass(frozen=True)
class Lease:
    """A lease record as read from the bucket; `valid_until` is set only on the holder's copy."""

    partition: int
    node: str  # "" once released
    epoch: int
    lease_s: float
    expires_at: float  # the holder's wall clock: informational
    revision: int  # the key's KV revision: the compare-and-set token
    valid_until: float = 0.0  # holder's monotonic clock: it may act as owner until then

    @property
    def held(self) -> bool:
        return bool(self.node)


def _encode(node: str, epoch: int, lease_s: float, expires_at: float) -> bytes:
    return json.dumps({"node": node, "epoch": epoch, "lease_s": lease_s, "expires_at": expires_at}).encode()


class Leases:
    """Leases of one bucket; async, for the NATS client's loop (see client.NatsThread.run for threads).

    `clock` is a monotonic clock (injectable for tests); `wall` only fills
    `expires_at`. `margin_s` defaults to 2% of each lease plus 10 ms.
    """

    def __init__(self, js: JetStreamContext, bucket: str = "cascade-leases", *, replicas: int = 1,
                 clock: Callable[[], float] = time.monotonic, wall: Callable[[], float] = time.time,
                 margin_s: float | None = None) -> None:
        self.js, self.bucket, self.replicas = js, bucket, replicas
        self.clock, self.wall, self.margin_s = clock, wall, margin_s
        self._kv: KeyValue | None = None
        self._seen: dict[int, tuple[int, float]] = {}  # partition -> (revision, when this node first read it)

    async def open(self, give_up_s: float = 30.0) -> Leases:
        """Bind to the bucket, creating it (history 1, `replicas`) if it does not exist."""
        what = f"lease bucket {self.bucket}: open"
        try:
            self._kv = await retried(lambda: self.js.key_value(self.bucket), what, give_up_s)
        except BucketNotFoundError:
            self._kv = await retried(lambda: self.js.create_key_value(
                bucket=self.bucket, history=1, replicas=self.replicas), what, give_up_s)
        return self

    @property
    def kv(self) -> KeyValue:
        if self._kv is None:
            raise RuntimeError("Leases.open() has not been awaited")
        return self._kv

    def _margin(self, lease_s: float) -> float:
        return self.margin_s if self.margin_s is not None else 0.01 + 0.02 * lease_s

    async def _read(self, partition: int) -> Lease | None:
        try:
            entry = await self.kv.get(f"p{partition}")
        except KeyNotFoundError:
            return None
        assert entry.value is not None and entry.revision is not None
        body = json.loads(entry.value)
        lease = Lease(partition, str(body["node"]), int(body["epoch"]), float(body["lease_s"]),
                      float(body["expires_at"]), entry.revision)
        seen = self._seen.get(partition)
        if seen is None or seen[0] != lease.revision:
            self._seen[partition] = (lease.revision, self.clock())
        return lease

    def _expired(self, lease: Lease) -> bool:
        """Seen unchanged for a whole lease on this node's clock."""
        revision, since = self._seen[lease.partition]
        return revision == lease.revision and self.clock() - since >= lease.lease_s

    async def holder(self, partition: int) -> Lease | None:
        """The current lease of `partition` (perhaps expired), or None if nobody holds it."""
        lease = await self._read(partition)
        return lease if lease is not None and lease.held else None

    async def acquire(self, partition: int, node: str, lease_s: float) -> Lease | None:
        """Take the partition with a new epoch if it is free, expired, released or `node`'s own; else None."""
        began = self.clock()
        current = await self._read(partition)
        try:
            if current is None:
                epoch = 1
                revision = await self.kv.create(f"p{partition}", _encode(node, epoch, lease_s, self.wall() + lease_s))
            elif current.held and current.node != node and not self._expired(current):
                return None
            else:
                epoch = current.epoch + 1
                revision = await self.kv.update(f"p{partition}", _encode(node, epoch, lease_s, self.wall() + lease_s),
                                                last=current.revision)
        except KeyWrongLastSequenceError:
            return None  # another node got there first
        self._seen[partition] = (revision, began)
        return Lease(partition, node, epoch, lease_s, self.wall() + lease_s, revision,
                     began + lease_s - self._margin(lease_s))

    async def renew(self, lease: Lease) -> Lease:
        """Extend `lease` (same epoch, new revision); LeaseLost if it changed since."""
        began = self.clock()
        try:
            revision = await self.kv.update(
                f"p{lease.partition}", _encode(lease.node, lease.epoch, lease.lease_s, self.wall() + lease.lease_s),
                last=lease.revision)
        except KeyWrongLastSequenceError:
            raise LeaseLost(f"partition {lease.partition}: lease epoch {lease.epoch} of {lease.node} "
                            "was changed by another node") from None
        self._seen[lease.partition] = (revision, began)
        return replace(lease, revision=revision, expires_at=self.wall() + lease.lease_s,
                       valid_until=began + lease.lease_s - self._margin(lease.lease_s))

    async def release(self, lease: Lease) -> None:
        """Give the partition up now (the next acquire needs no wait); LeaseLost if it was no longer ours."""
        try:
            await self.kv.update(f"p{lease.partition}", _encode("", lease.epoch, lease.lease_s, self.wall()),
                                 last=lease.revision)
        except KeyWrongLastSequenceError:
            raise LeaseLost(f"partition {lease.partition}: lease epoch {lease.epoch} of {lease.node} "
                            "was already taken over") from None
