"""Reading a stream from a sequence on: an ephemeral pull consumer, fetched in batches.

nats-py's `PullSubscription.fetch` waits for each message of a batch with its
own timeout (a task per message): about 400 µs a message here. `Puller`
sends the pull request itself and collects the batch in a subscription
callback, about 16 µs a message (measured on 3,000 small messages).

A request asks for up to `n` messages with `no_wait`: the server sends what
it has, then a 404/408 status if that was fewer than `n`. Invariants: every
wait is bounded by `timeout`; messages come back in stream order; a message
that arrives late (after its batch timed out) turns up in the next batch,
so callers skip sequences they have already seen; `close` deletes the
consumer (the server also drops it after `inactive_threshold_s` unused).
"""

from __future__ import annotations

import asyncio
import contextlib
import json

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext, api

__all__ = ["Puller"]


class Puller:
    """Batches of messages of `stream` from sequence `start` on (optionally only `subject`); on the client's loop."""

    def __init__(self, nc: Client, js: JetStreamContext, stream: str, start: int, subject: str | None = None, *,
                 timeout: float = 5.0, inactive_threshold_s: float = 30.0, max_bytes: int = 16 << 20) -> None:
        self.nc, self.js, self.stream, self.start, self.subject, self.timeout = nc, js, stream, start, subject, timeout
        self.inactive_threshold_s, self.max_bytes = inactive_threshold_s, max_bytes
        self.consumer = ""
        self._got: list[Msg] = []
        self._wanted = 0
        self._done: asyncio.Future[None] | None = None
        self._sub: Subscription | None = None
        self._inbox = ""

    async def open(self) -> Puller:
        config = api.ConsumerConfig(
            deliver_policy=api.DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=self.start,
            ack_policy=api.AckPolicy.NONE, mem_storage=True, num_replicas=1,
            inactive_threshold=self.inactive_threshold_s, filter_subject=self.subject)
        info = await self.js.add_consumer(self.stream, config)
        assert info.name is not None
        self.consumer = info.name
        self._inbox = self.nc.new_inbox()
        self._sub = await self.nc.subscribe(self._inbox, cb=self._collect)
        return self

    async def _collect(self, msg: Msg) -> None:
        status = (msg.headers or {}).get("Status")
        if status is None:
            self._got.append(msg)
        done = self._done
        if done is not None and not done.done() and (status is not None or len(self._got) >= self._wanted):
            done.set_result(None)

    async def next(self, n: int) -> list[Msg]:
        """Up to `n` further messages (fewer if the stream has no more now, or the answer is slow)."""
        self._wanted = n
        self._done = asyncio.get_running_loop().create_future()
        request = json.dumps({"batch": n, "max_bytes": self.max_bytes, "no_wait": True}).encode()
        await self.nc.publish(f"$JS.API.CONSUMER.MSG.NEXT.{self.stream}.{self.consumer}", request,
                                  reply=self._inbox)
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._done, self.timeout)
        got, self._got = self._got, []
        return got

    async def close(self) -> None:
        with contextlib.suppress(Exception):  # best effort: the server drops it when inactive anyway
            if self._sub is not None:
                await self._sub.unsubscribe()
            await self.js.delete_consumer(self.stream, self.consumer)
