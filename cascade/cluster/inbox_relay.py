"""In-app inbox changes across nodes, for the inbox stream (SSE).

A stream is served by whichever node the client reached, but the changes
happen on the node that owns the recipient's partition. Every owner
publishes its partitions' inbox changes on `<prefix>.inbox` (one NATS
message per batch of changes, msgpack `[node, [[rid, messageId, kind],
...]]`); a node with open streams subscribes and hands the changes other
nodes made to its streams' listener, which keeps what concerns its own
streams (its own changes reach the listener directly, not through NATS).
Core NATS, not JetStream: a change missed while a stream reconnects is
what the stream's `unseen` count on connect makes good.

Invariants: `changed` is called on shard threads and only queues (one hop
to the NATS loop per batch); publishing stops when the client closes.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from nats.aio.msg import Msg

from . import wire
from .client import NatsThread

__all__ = ["InboxRelay"]

log = logging.getLogger("cascade.cluster.inbox")
Listener = Callable[[str, str, str], None]


class InboxRelay:
    def __init__(self, node: str, subject: str) -> None:
        self.node, self.subject = node, subject
        self.client: NatsThread | None = None
        self._pending: list[list[str]] = []
        self._lock = threading.Lock()
        self._listener: Listener | None = None
        self._sub: Any = None

    def attach(self, client: NatsThread) -> None:
        self.client = client

    def changed(self, rid: str, message_id: str, kind: str) -> None:
        """An inbox change on one of this node's partitions (a shard's thread): publish it soon."""
        client = self.client
        if client is None:
            return
        with self._lock:
            first = not self._pending
            self._pending.append([rid, message_id, kind])
        if first:
            try:
                client.call_soon(self._publish)
            except RuntimeError:  # the client has closed: nobody elsewhere is listening through it
                pass

    def _publish(self) -> None:
        with self._lock:
            batch, self._pending = self._pending, []
        client = self.client
        if batch and client is not None:
            client.loop.create_task(self._send(client, wire.encode([self.node, batch])))

    async def _send(self, client: NatsThread, data: bytes) -> None:
        try:
            await client.nc.publish(self.subject, data)
        except Exception as exc:  # noqa: BLE001 - a stream elsewhere misses a push; its next unseen count corrects it
            log.warning("inbox changes not relayed: %r", exc)

    def listen(self, listener: Listener | None) -> None:
        """Hand other nodes' changes to `listener` (None: stop listening)."""
        self._listener = listener
        client = self.client
        if client is None:
            return
        if listener is not None and self._sub is None:
            try:  # once, for the first stream: a round trip, bounded short since it holds the caller's loop
                self._sub = client.run(client.nc.subscribe(self.subject, cb=self._received), 2.0)
            except Exception as exc:  # noqa: BLE001 - streams then see this node's partitions only, until the next first stream
                log.warning("not listening to other nodes' inbox changes: %r", exc)
        elif listener is None and self._sub is not None:
            sub, self._sub = self._sub, None
            client.call_soon(lambda: client.loop.create_task(sub.unsubscribe()))

    async def _received(self, msg: Msg) -> None:
        listener = self._listener
        if listener is None:
            return
        node, batch = wire.decode(msg.data)
        if node == self.node:
            return
        for rid, message_id, kind in batch:
            listener(rid, message_id, kind)
