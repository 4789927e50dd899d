"""A cluster node: membership, partition leases, the partitions it owns, and
the subject other nodes forward calls to.

The ownership loop (one thread, every `lease_s / 4`):
1. heartbeat this node's member entry and read the others';
2. renew the lease of every partition it owns; a lease that changed under
   it (LeaseLost), or one it could not renew before it ran out (a pause, a
   partition from NATS), stops the partition at once;
3. hand over owned partitions that rendezvous hashing now gives another
   live node (a joining node's share): last snapshot, release the lease;
4. acquire the partitions of its share that are free, released or expired
   (a dead node's), and open them in threads of their own, so renewals never
   wait for a recovery.
Leases and fencing are lease.py's and stream_journal.py's: a lease says who
should write, the stream's expected-sequence check refuses whoever should
not. `local(p)` answers a partition's engine only while this node both
serves it and holds an unexpired lease on its own clock.

Calls forwarded from other nodes arrive on `<prefix>.node.<id>` and run on
the NATS client's loop against the local engines (ops.py); a call for a
partition this node does not own (any more) answers NOT_OWNER and the
caller looks again.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import nats.errors
from nats.aio.msg import Msg
from nats.js.errors import BucketNotFoundError, KeyWrongLastSequenceError

from ..engine import Engine
from . import wire
from .assign import share
from .client import NatsThread
from .clock import ClusterClock
from .lease import Lease, LeaseLost, Leases
from .members import Members
from .partition import Partition, PartitionSettings
from .transient import retried

__all__ = ["ClusterMismatch", "Node", "NodeFigures"]

log = logging.getLogger("cascade.cluster.node")
Handler = Callable[["Node", tuple[Any, ...]], Awaitable[Any]]


class ClusterMismatch(Exception):
    """This node's settings disagree with the cluster's recorded ones (its partition count)."""


@dataclass
class NodeFigures:
    """Per-node figures for /metrics."""

    takeovers: int = 0
    takeover_seconds: float = 0.0
    handovers: int = 0
    lost: int = 0
    forwarded: int = 0
    forward_seconds: float = 0.0
    served: int = 0


class Node:
    def __init__(self, *, node: str, address: str, servers: list[str], partitions: int, replicas: int,
                 lease_s: float, prefix: str, partition_settings: Callable[[NatsThread], PartitionSettings],
                 handlers: dict[str, Handler], on_open: Callable[[Partition], None],
                 clock: ClusterClock | None = None) -> None:
        self.id, self.address, self.servers = node, address, servers
        self.clock = clock or ClusterClock("real")
        self.partitions, self.replicas, self.lease_s, self.prefix = partitions, replicas, lease_s, prefix
        self._make_settings, self._handlers, self._on_open = partition_settings, handlers, on_open
        self.figures = NodeFigures()
        self.client: NatsThread | None = None
        self.settings: PartitionSettings | None = None
        self.owned: dict[int, Partition] = {}
        self.leases_held: dict[int, Lease] = {}
        self.opening: set[int] = set()
        self.owners: dict[int, tuple[str, int]] = {}  # partition -> (node, epoch), as last read
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._draining = False
        self._thread: threading.Thread | None = None
        self._openers = concurrent.futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="cascade-open")
        self._leases: Leases | None = None
        self._members: Members | None = None
        self._sub: Any = None
        self.first_round = threading.Event()
        self.others_alive = False  # another node could be forwarding calls here

    # -- lifecycle -------------------------------------------------------------------
    def start(self) -> None:
        """Connect, check the cluster's shape, start answering forwarded calls and the ownership loop (blocking)."""
        self.client = client = NatsThread(self.servers, name=f"cascade-{self.id}")
        try:
            self._settle(client)
            self._sub = client.run(client.nc.subscribe(self.subject(self.id), cb=self._serve_call), 10.0)
        except BaseException:
            client.close()
            raise
        self._thread = threading.Thread(target=self._loop, name=f"cascade-node-{self.id}", daemon=True)
        self._thread.start()

    def _settle(self, client: NatsThread, give_up_s: float = 60.0) -> None:
        """Bind or create the cluster's buckets. A JetStream cluster that has just started, or lost a
        server, answers "no responders" or times out until its streams have leaders: retried, bounded."""
        deadline = time.monotonic() + give_up_s
        attempt = 0
        while True:
            try:
                client.run(self._check_shape(), 30.0)
                self._leases = client.run(Leases(client.js, f"{self.prefix}-leases", replicas=self.replicas).open(),
                                          30.0)
                self._members = client.run(Members(client.js, self.id, self.address, bucket=f"{self.prefix}-nodes",
                                                   lease_s=self.lease_s, replicas=self.replicas).open(), 30.0)
                self.settings = self._make_settings(client)
                return
            except ClusterMismatch:
                raise
            except (TimeoutError, nats.errors.Error) as exc:  # JetStream's errors are nats.errors.Error too
                attempt += 1
                if time.monotonic() >= deadline:
                    raise
                log.warning("node %s: JetStream not ready yet (%r); retrying", self.id, exc)
                time.sleep(min(0.2 * attempt, 2.0))  # back-off while the JetStream cluster elects leaders

    async def _check_shape(self) -> None:
        """The partition count is the cluster's, fixed at its creation: refuse to join with another."""
        assert self.client is not None
        js = self.client.js
        bucket, what = f"{self.prefix}-cluster", f"cluster bucket {self.prefix}-cluster: open"
        try:
            kv = await retried(lambda: js.key_value(bucket), what, 25.0)
        except BucketNotFoundError:
            kv = await retried(lambda: js.create_key_value(bucket=bucket, history=1, replicas=self.replicas),
                               what, 25.0)
        shape = json.dumps({"partitions": self.partitions, "clock": self.clock.origin()}).encode()
        try:
            await kv.create("shape", shape)
            return
        except KeyWrongLastSequenceError:
            pass
        entry = await kv.get("shape")
        recorded = json.loads(entry.value or b"{}")
        if recorded.get("partitions") != self.partitions:
            raise ClusterMismatch(f"cluster.partitions is {self.partitions} but the cluster {self.prefix!r} was "
                                  f"created with {recorded.get('partitions')}: partitions are fixed for a cluster's life")
        clock = recorded.get("clock") or {"mode": "real", "rate": 1.0}
        if (clock["mode"], float(clock["rate"])) != (self.clock.mode, self.clock.rate):
            raise ClusterMismatch(f"clock.mode {self.clock.mode!r} (rate {self.clock.rate:g}) differs from the "
                                  f"cluster's {clock['mode']!r} (rate {float(clock['rate']):g}): every node "
                                  "must read the same time")
        if self.clock.mode == "scaled":
            self.clock.adopt(clock)

    def subject(self, node: str) -> str:
        return f"{self.prefix}.node.{node}"

    def stop(self, drain: bool = True, before_close: Callable[[], None] | None = None) -> None:
        """Leave the cluster. `drain`: hand every partition over first (snapshot, release), so the others
        take them at once instead of after `lease_s`."""
        self._draining = True
        if self._members is not None:
            self._members.draining = True
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30.0)
        self._openers.shutdown(wait=True, cancel_futures=True)
        client = self.client
        with self._lock:
            owned = list(self.owned.values())
        for partition in owned:
            self._let_go(partition, handover=drain, reason="node stopping" if drain else "node stopping (no drain)")
        if before_close is not None:
            before_close()
        if client is not None:
            if drain and self._members is not None:
                try:
                    client.run(self._members.leave(), 5.0)
                except Exception:
                    log.warning("node %s: could not remove its member entry", self.id, exc_info=True)
            client.close()

    # -- the ownership loop ------------------------------------------------------------
    def _loop(self) -> None:
        interval = self.lease_s / 4
        while not self._stop.is_set():
            began = time.monotonic()
            try:
                self._round()
            except Exception:
                log.warning("node %s: ownership round failed; retrying", self.id, exc_info=True)
            self.first_round.set()
            self._stop.wait(max(0.0, interval - (time.monotonic() - began)))

    def _round(self) -> None:
        client, leases, members = self.client, self._leases, self._members
        assert client is not None and leases is not None and members is not None
        self._renew_all()
        client.run(members.heartbeat(), self.lease_s)
        client.run(members.refresh(), self.lease_s)
        self.others_alive = any(m.alive and m.node != self.id for m in members.members())
        # Read once: a stop can set _draining while this round runs, and then hands over what the round keeps.
        draining = self._draining
        wanted = share(self.id, members.sharing(), self.partitions) if not draining else set()
        with self._lock:
            held = dict(self.leases_held)
            owned = dict(self.owned)
        # Hand over only when another node shares the partitions (it takes them at once), or draining.
        successor = draining or bool(set(members.sharing()) - {self.id})
        reason = "node stopping" if draining else "rebalanced to another node"
        for p, partition in owned.items():
            if p not in wanted and successor:
                self._let_go(partition, handover=True, reason=reason)
        for p in sorted(wanted - set(held) - self.opening):
            lease = client.run(leases.acquire(p, self.id, self.lease_s), self.lease_s)
            if lease is None:
                continue
            with self._lock:
                self.leases_held[p] = lease
                self.opening.add(p)
            self._openers.submit(self._open, p, lease)
        self._read_owners()

    def _renew_all(self) -> None:
        client, leases = self.client, self._leases
        assert client is not None and leases is not None
        with self._lock:
            held = list(self.leases_held.values())
        for lease in held:
            try:
                renewed = client.run(leases.renew(lease), min(self.lease_s / 2, 5.0))
            except LeaseLost as exc:
                self._lost(lease.partition, str(exc))
                continue
            except Exception as exc:  # NATS away: the lease runs on until valid_until
                if time.monotonic() >= lease.valid_until:
                    self._lost(lease.partition, f"lease not renewed before it ran out ({exc!r})")
                continue
            if time.monotonic() >= renewed.valid_until:  # the renewal itself took too long
                self._lost(lease.partition, "lease renewed too late")
                continue
            with self._lock:
                if lease.partition in self.leases_held:
                    self.leases_held[lease.partition] = renewed

    def _open(self, p: int, lease: Lease) -> None:
        assert self.settings is not None
        began = time.perf_counter()
        try:
            partition = Partition.open(p, lease.epoch, self.settings, self._journal_lost)
        except Exception as exc:
            log.warning("node %s: could not open partition %d: %s", self.id, p, exc, exc_info=True)
            with self._lock:
                self.opening.discard(p)
                self.leases_held.pop(p, None)
            client, leases = self.client, self._leases
            if client is not None and leases is not None:
                try:
                    client.run(leases.release(lease), 5.0)
                except Exception:
                    pass
            return
        partition.may_write = lambda: (partition.serving or partition.handing_over) and self._lease_valid(p)
        with self._lock:
            self.opening.discard(p)
            still_ours = p in self.leases_held and not self._stop.is_set()
            if still_ours:
                self.owned[p] = partition
        if not still_ours:
            partition.close(handover=False, reason="lease lost while opening")
            return
        self._on_open(partition)
        self.figures.takeovers += 1
        self.figures.takeover_seconds += time.perf_counter() - began

    def _journal_lost(self, partition: Partition, reason: str) -> None:
        """The stream refused this owner (fenced) or failed: stop at once (called on the NATS loop)."""
        partition.lost = True
        partition.serving = False
        threading.Thread(target=self._lost, args=(partition.number, f"journal: {reason}"), daemon=True).start()

    def _lost(self, p: int, reason: str) -> None:
        with self._lock:
            self.leases_held.pop(p, None)
            partition = self.owned.pop(p, None)
        if partition is not None:
            partition.serving = False
            self.figures.lost += 1
            log.warning("node %s: lost partition %d: %s", self.id, p, reason,
                        extra={"event": "partition_lost", "partition": p, "reason": reason})
            # Closing publishes what is queued: what JetStream still takes (appended before another
            # owner's takeover) is answered to its callers; only then are the rest sent elsewhere.
            partition.close(handover=False, reason=reason)
            partition.lost = True

    def _let_go(self, partition: Partition, handover: bool, reason: str) -> None:
        p = partition.number
        with self._lock:
            self.owned.pop(p, None)
        partition.close(handover=handover, reason=reason)  # its last snapshot needs the lease still held
        with self._lock:
            lease = self.leases_held.pop(p, None)
        self.figures.handovers += 1
        client, leases = self.client, self._leases
        if lease is not None and client is not None and leases is not None:
            try:
                client.run(leases.release(lease), 5.0)
            except Exception as exc:
                log.warning("node %s: partition %d not released (%r); it frees itself after lease_s", self.id, p, exc)

    def _read_owners(self) -> None:
        client, leases = self.client, self._leases
        assert client is not None and leases is not None
        owners = {}
        for p in range(self.partitions):
            lease = client.run(leases.holder(p), self.lease_s)
            if lease is not None:
                owners[p] = (lease.node, lease.epoch)
        self.owners = owners

    # -- what the front door asks ------------------------------------------------------
    def serving(self, p: int) -> Partition | None:
        """Partition `p` if this node serves it now (serving, lease valid on its clock)."""
        partition = self.owned.get(p)
        if partition is None or not partition.serving or not self._lease_valid(p):
            return None
        return partition

    def local(self, p: int) -> Engine | None:
        partition = self.serving(p)
        return partition.engine if partition is not None else None

    def answering(self, partition: Partition) -> bool:
        """Whether a call already given to `partition`'s engine may still be answered by it: until the
        partition is lost, that is fenced (JetStream refuses its writes) or closed after its lease ended
        (what JetStream took by then is answered). A lapsed lease alone is not enough: a write
        acknowledged just then must not be made again elsewhere."""
        return not partition.lost

    def _lease_valid(self, p: int) -> bool:
        lease = self.leases_held.get(p)
        return lease is not None and time.monotonic() < lease.valid_until

    def owner(self, p: int) -> str | None:
        if self.local(p) is not None:
            return self.id
        held = self.owners.get(p)
        return held[0] if held is not None else None

    async def refresh_owner(self, p: int) -> None:
        """Read partition `p`'s lease again (a call found the owner moved); on the NATS loop."""
        assert self._leases is not None
        lease = await self._leases.holder(p)
        owners = dict(self.owners)
        if lease is None:
            owners.pop(p, None)
        else:
            owners[p] = (lease.node, lease.epoch)
        self.owners = owners

    def members(self) -> list[Any]:
        return self._members.members() if self._members is not None else []

    async def call(self, node: str, frame: list[Any], timeout: float) -> Any:
        """Forward `frame` to `node` and return its decoded answer (on the NATS loop)."""
        assert self.client is not None
        began = time.perf_counter()
        msg = await self.client.nc.request(self.subject(node), wire.encode(frame), timeout=timeout)
        self.figures.forwarded += 1
        self.figures.forward_seconds += time.perf_counter() - began
        return wire.decode(msg.data)

    async def _serve_call(self, msg: Msg) -> None:
        try:
            op, partition, args = wire.decode(msg.data)
            handler = self._handlers[op]
            answer: list[Any] = [wire.OK, await handler(self, (partition, *args))]
        except BaseException as exc:  # noqa: BLE001 - every failure goes back to the caller
            if isinstance(exc, asyncio.CancelledError):
                raise
            answer = wire.error_frame(exc)
        self.figures.served += 1
        try:
            await msg.respond(wire.encode(answer))
        except Exception:
            log.warning("node %s: could not answer a forwarded call", self.id, exc_info=True)

    # -- the admin view -------------------------------------------------------------------
    def view(self) -> dict[str, Any]:
        members = self.members()
        by_node: dict[str, list[int]] = {}
        for p, (node, _) in sorted(self.owners.items()):
            by_node.setdefault(node, []).append(p)
        nodes = [{"id": m.node, "address": m.address, "alive": m.alive, "draining": m.draining,
                  "partitions": by_node.get(m.node, [])} for m in members]
        parts = []
        for p in range(self.partitions):
            node, epoch = self.owners.get(p, ("", 0))
            local = self.owned.get(p)
            entry: dict[str, Any] = {"partition": p, "owner": node or None, "epoch": epoch}
            if local is not None:
                entry["position"] = local.position()
                entry["replayLag"] = 0
            parts.append(entry)
        return {"node": self.id, "nodes": nodes, "partitions": parts}
