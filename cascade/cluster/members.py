"""Who is in the cluster: one key a node in a key-value bucket, heartbeated.

Each node writes `{"node", "address", "draining", "at"}` under its id every
`heartbeat_s`. Liveness follows lease.py's rule, with no wall clocks
compared across machines: a member is alive while this node has seen its
entry's revision change within `lease_s` on its own monotonic clock (and
this node itself always is). A draining member is alive (it still serves
what it owns) but takes no share of the partitions, so its partitions go to
the others. The bucket's entries expire after a while (`max_age`) so the
list does not grow with every node that ever lived.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass

from nats.js import JetStreamContext
from nats.js.errors import BucketNotFoundError, KeyNotFoundError, NoKeysError
from nats.js.kv import KeyValue

from .transient import retried

__all__ = ["Member", "Members"]


@dataclass(frozen=True)
class Member:
    node: str
    address: str
    draining: bool
    alive: bool


class Members:
    """Async, for the NATS client's loop."""

    def __init__(self, js: JetStreamContext, node: str, address: str, *, bucket: str, lease_s: float,
                 replicas: int = 1, clock: Callable[[], float] = time.monotonic) -> None:
        self.js, self.node, self.address, self.bucket = js, node, address, bucket
        self.lease_s, self.replicas, self.clock = lease_s, replicas, clock
        self.draining = False
        self._kv: KeyValue | None = None
        self._seen: dict[str, tuple[int, float, Member]] = {}  # node -> (revision, first seen, entry)

    async def open(self, give_up_s: float = 30.0) -> Members:
        what = f"member bucket {self.bucket}: open"
        try:
            self._kv = await retried(lambda: self.js.key_value(self.bucket), what, give_up_s)
        except BucketNotFoundError:
            self._kv = await retried(lambda: self.js.create_key_value(
                bucket=self.bucket, history=1, replicas=self.replicas, ttl=max(60.0, 20 * self.lease_s)),
                what, give_up_s)
        return self

    @property
    def kv(self) -> KeyValue:
        assert self._kv is not None, "Members.open() has not been awaited"
        return self._kv

    async def heartbeat(self) -> None:
        body = {"node": self.node, "address": self.address, "draining": self.draining, "at": time.time()}
        await self.kv.put(self.node, json.dumps(body).encode())

    async def leave(self) -> None:
        await self.kv.delete(self.node)

    async def refresh(self) -> list[Member]:
        """Every member this node knows of, read now, with its liveness."""
        try:
            keys = await self.kv.keys()
        except NoKeysError:
            # nats-py's listing says "no keys" now and then on a bucket being rewritten (about once in
            # 150 calls; this node's own key is there): a failed read, not an empty cluster. Forgetting
            # everyone would make every partition this node's share for a round.
            return self.members()
        now = self.clock()
        present = set()
        for key in keys:
            try:
                entry = await self.kv.get(key)
            except KeyNotFoundError:
                continue
            if entry.value is None or entry.revision is None:
                continue
            body = json.loads(entry.value)
            member = Member(key, str(body.get("address", "")), bool(body.get("draining")), True)
            present.add(key)
            seen = self._seen.get(key)
            if seen is None or seen[0] != entry.revision:
                self._seen[key] = (entry.revision, now, member)
            else:
                self._seen[key] = (seen[0], seen[1], member)
        for key in list(self._seen):
            if key not in present:
                del self._seen[key]
        return self.members()

    def members(self) -> list[Member]:
        now = self.clock()
        out = []
        for node, (_, since, member) in sorted(self._seen.items()):
            alive = node == self.node or now - since < self.lease_s
            out.append(Member(member.node, member.address, member.draining, alive))
        if self.node not in self._seen:
            out.append(Member(self.node, self.address, self.draining, True))
        return out

    def sharing(self) -> list[str]:
        """The nodes that take a share of the partitions: alive and not draining (this one unless draining)."""
        return [m.node for m in self.members() if m.alive and not (m.draining or (m.node == self.node and self.draining))]
