"""The journal of one partition on a JetStream stream, fenced by expected sequence.

Stream `<prefix>-p<N>` holds subject `<prefix>.p<N>.journal` (records) and
`<prefix>.p<N>.owner` (takeover records). It is the same `Journal` as
`storage/journal.py` (one behaviour suite): positions count records, not
stream messages. A journal message carries the msgpack frames of one or
more appends (the file journal's frames, from the same codec) and headers:
`Cascade-End` (the position after its records), `Cascade-Count`,
`Cascade-Epoch`. So the last journal message gives the position on open,
and `replay(after)` finds its first message by binary search on
`Cascade-End` (next-journal-message-at-or-after gets from the stream leader,
which step over takeover records and purge gaps: about 20 requests for a
million messages), then reads on with a pull consumer (ack none, in memory,
up to 512 messages or 16 MiB a request, see pull.py): one round trip a
batch, not a message, served by the stream leader, so a lagging replica
cannot show a short journal. Direct get would be one request per message
and, with `allow_direct`, may be answered by a follower that is behind.

Fencing (Temporal's range ids, on JetStream): opening is a takeover. The new
owner reads the last takeover record, refuses if its epoch is at or above
its own (`Fenced`), and publishes its own `{node, epoch}` conditioned on the
owner subject's last sequence (`Nats-Expected-Last-Subject-Sequence`): a
concurrent takeover makes one of the two fail and read again, while the old
owner's appends, which never touch that subject, cannot starve it (a stream-
wide condition could: tested with four threads appending flat out). Nothing
of the old owner lands after the takeover, so the last journal message then
gives the position. Every journal publish carries
`Nats-Expected-Last-Sequence` = this owner's previous message (its takeover
record first), so after a takeover the old owner's next write is refused by
JetStream itself; the journal then raises `Fenced` on every append and calls
`on_lost` once, so the owner stops serving the partition at once. Publishes
also carry `Nats-Msg-Id` (<stream>:<epoch>:<sequence>, or :takeover): a
publish whose ack was lost is retried with the same id; JetStream checks the
expected sequence before its duplicate window, so the retry is refused, and
the journal then reads the message where its publish would be: if that
carries the id, the first attempt was stored and the append is acknowledged;
otherwise it is fencing. A publish not acknowledged within `give_up_s` fails
the journal (`JournalError`, `on_lost` too): a write whose fate is unknown
cannot be followed by others. Takeover records are never purged: they keep
the epochs, one small message a takeover.

Threads: `append` only encodes and queues (shard threads never wait on the
network, only on back-pressure above `max_pending_bytes`); the writer runs on
the NATS client's loop (client.NatsThread), one publish per group of queued
appends (group commit: everything queued while the last publish was in
flight), one in flight at a time. `on_durable` fires on the loop thread after
the publish ack, i.e. once a quorum of the stream's replicas holds the
records; callbacks must not block. `rotate` ends the current message
(returns the position once what came before is acknowledged);
`drop_before` purges the journal messages whose records all lie at or
before the position (the last one always stays: it carries the position).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import msgpack
import nats.errors
from nats.js import api
from nats.js.errors import APIError, NotFoundError

from ..storage.codec import FrameReader, StopReason, encode_records
from ..storage.journal import JournalClosed, JournalError, JournalIssue, JournalStats, RecoveryReport
from .client import NatsThread
from .journal_stats import AckCounters
from .pull import Puller
from .transient import retried

__all__ = ["Fenced", "StreamJournal", "Takeover"]

log = logging.getLogger("cascade.cluster.journal")
Callback = Callable[[], None]
T = TypeVar("T")
WRONG_LAST_SEQUENCE = (10071, 10164)  # JSStreamWrongLastSequenceErrF, ...ConstantErr
EXPECTED, MSG_ID = "Nats-Expected-Last-Sequence", "Nats-Msg-Id"
EXPECTED_SUBJECT = "Nats-Expected-Last-Subject-Sequence"
END, COUNT, EPOCH = "Cascade-End", "Cascade-Count", "Cascade-Epoch"


class Fenced(JournalError):
    """Another owner took the partition over; this journal's writes are refused from now on."""

    def __init__(self, partition: int, node: str, epoch: int, detail: str) -> None:
        super().__init__(f"partition {partition}: {node} (epoch {epoch}) is fenced: {detail}")
        self.partition, self.node, self.epoch = partition, node, epoch


@dataclass(frozen=True)
class Takeover:
    """A takeover record: `node` owns the partition with `epoch` from stream sequence `seq` on."""

    seq: int
    node: str
    epoch: int


@dataclass
class _Entry:
    data: bytes | None  # None: a rotate marker
    count: int
    end: int
    done: Callback | None
    at: float


class _WrongLast(Exception):
    pass


def _header_int(msg_headers: dict[str, str] | None, name: str, seq: int) -> int:
    value = (msg_headers or {}).get(name)
    if value is None:
        raise JournalError(f"stream message {seq} has no {name} header: not written by a cascade journal")
    return int(value)


class StreamJournal:
    """A `Journal` on one JetStream stream per partition; opening it takes the partition over with `epoch`."""

    recovery_report: RecoveryReport

    def __init__(self, client: NatsThread, partition: int, node: str, epoch: int, *, replicas: int = 1,
                 prefix: str = "cascade", on_lost: Callable[[JournalError], None] | None = None,
                 max_pending_bytes: int = 64 << 20, max_message_bytes: int = 1 << 20,
                 publish_timeout_s: float = 2.0, give_up_s: float = 30.0, open_timeout_s: float = 30.0,
                 replay_batch: int = 512) -> None:
        self.client, self.partition, self.node, self.epoch, self.replicas = client, partition, node, epoch, replicas
        self.stream = f"{prefix}-p{partition}"
        self.subject, self.owner_subject = f"{prefix}.p{partition}.journal", f"{prefix}.p{partition}.owner"
        self.on_lost, self.publish_timeout_s, self.give_up_s = on_lost, publish_timeout_s, give_up_s
        self._max_pending, self._replay_batch = max_pending_bytes, replay_batch
        self._max_message = min(max_message_bytes, client.nc.max_payload - 4096)
        self._lock = threading.Lock()
        self._space = threading.Condition(self._lock)  # appenders under back-pressure; replay; rotate
        self._queue: list[_Entry] = []
        self._pending = 0
        self._closing = False
        self.failure: JournalError | None = None
        self._counters = AckCounters()
        self._wake = asyncio.Event()
        self._last_seq = self._last_data_seq = self._messages = 0
        position = client.run(self._open(), open_timeout_s)
        self._position = self._durable = position
        self.recovery_report = RecoveryReport(position, 1, [])
        self._writer = asyncio.run_coroutine_threadsafe(self._write_loop(), client.loop)

    # -- callers' side ---------------------------------------------------------

    def append(self, records: Sequence[Any], on_durable: Callback | None = None) -> int:
        data = encode_records(records) if records else b""
        if len(data) > self._max_message:
            raise ValueError(f"an append of {len(data)} bytes exceeds the {self._max_message}-byte message limit")
        with self._lock:
            self._check_open()
            if self._pending and self._pending + len(data) > self._max_pending and not self.client.on_loop:
                self._counters.waits += 1
                while self._pending and self._pending + len(data) > self._max_pending:
                    self._space.wait()
                    self._check_open()
            self._pending += len(data)
            self._position += len(records)
            position = self._position
            self._queue.append(_Entry(data, len(records), position, on_durable, time.perf_counter()))
            self._counters.appended(len(records), len(data))
            wake = len(self._queue) == 1
        if wake:
            self._wake_writer()
        return position

    def position(self) -> int:
        return self._position

    def rotate(self) -> int:
        """End the current stream message here; the position, once everything before it is acknowledged."""
        done = threading.Event()
        with self._lock:
            self._check_open()
            start = self._position
            self._queue.append(_Entry(None, 0, start, done.set, 0.0))
            wake = len(self._queue) == 1
        if wake:
            self._wake_writer()
        if not done.wait(self.give_up_s + self.publish_timeout_s + 5.0):
            raise JournalError(f"journal {self.stream}: rotate not done within {self.give_up_s} s")
        with self._lock:
            self._check_open(closing_ok=True)
        return start

    def replay(self, after: int = 0) -> Iterator[tuple[int, Any]]:
        """(position, record) after `after` for every record appended before the call, in order."""
        deadline = time.monotonic() + self.give_up_s + self.publish_timeout_s
        with self._lock:
            while self._durable < self._position and self.failure is None:
                if not self._space.wait(max(0.0, deadline - time.monotonic())):
                    raise JournalError(f"journal {self.stream}: appends not acknowledged within {self.give_up_s} s")
            target = self._last_seq
        return self._replay(after, target)

    def drop_before(self, position: int) -> None:
        """Purge the journal messages whose records all lie at or before `position` (never the last one;
        takeover records stay: they hold the epochs)."""
        self.client.run(self._drop_before(position), self.give_up_s)

    def close(self) -> None:
        """Publish what is queued, stop the writer; later appends raise JournalClosed. The client stays open."""
        with self._lock:
            if self._closing:
                return
            self._closing = True
        try:
            self._wake_writer()
        except JournalError:  # the client is gone, and the writer with it
            return
        if not self.client.on_loop:  # on the loop (an on_lost callback closing us) it cannot wait
            try:
                self._writer.result(self.give_up_s + self.publish_timeout_s + 5.0)
            except Exception:
                log.warning("journal %s: writer did not stop cleanly", self.stream, exc_info=True)

    def stats(self) -> JournalStats:
        with self._lock:
            return self._counters.freeze(self._position, self._durable, self._pending, self._messages)

    def takeovers(self) -> list[Takeover]:
        """Every takeover record of the stream, oldest first (admin views, tests)."""
        return self.client.run(self._takeovers(), self.give_up_s)

    def _check_open(self, closing_ok: bool = False) -> None:
        if self.failure is not None:
            raise self.failure
        if self._closing and not closing_ok:
            raise JournalClosed(f"journal {self.stream} is closed")

    def _wake_writer(self) -> None:
        try:
            self.client.call_soon(self._wake.set)
        except RuntimeError as exc:  # the loop is gone: nothing can be published
            self._fail(JournalError(f"journal {self.stream}: the NATS client is closed"), [])
            raise JournalError(f"journal {self.stream}: the NATS client is closed") from exc

    # -- on the loop: open, write ----------------------------------------------

    async def _open(self) -> int:
        """Ensure the stream, publish the takeover record, return the position it stands at."""
        jsm = self.client.js
        try:
            info = await self._api(lambda: jsm.stream_info(self.stream), "stream info")
            if info.config.num_replicas != self.replicas:
                log.warning("journal %s: replicas %s -> %d", self.stream, info.config.num_replicas, self.replicas)
                config = info.config.evolve(num_replicas=self.replicas)
                info = await self._api(lambda: jsm.update_stream(config=config), "stream update")
        except NotFoundError:
            info = await self._api(lambda: jsm.add_stream(
                name=self.stream, subjects=[self.subject, self.owner_subject], num_replicas=self.replicas,
                storage=api.StorageType.FILE, retention=api.RetentionPolicy.LIMITS, discard=api.DiscardPolicy.OLD,
                duplicate_window=120.0, allow_direct=False, deny_delete=True), "stream create")
        payload = msgpack.packb({"takeover": self.node, "epoch": self.epoch})
        for _ in range(20):  # another takeover may land between our read and ours: read again
            previous = await self._last_on(self.owner_subject)
            epoch = _header_int(previous.headers, EPOCH, previous.seq) if previous is not None else 0
            if epoch >= self.epoch:
                raise Fenced(self.partition, self.node, self.epoch,
                             f"the stream already carries epoch {epoch} (sequence {previous and previous.seq})")
            # Conditioned on the owner subject alone: the old owner's appends cannot starve a takeover,
            # a concurrent takeover still makes one of the two fail.
            headers = {EXPECTED_SUBJECT: str(previous.seq if previous is not None else 0),
                       MSG_ID: f"{self.stream}:{self.epoch}:takeover", EPOCH: str(self.epoch)}
            try:
                seq = await self._publish(self.owner_subject, payload, headers, self._landed_last)
            except _WrongLast:
                continue
            # Nothing of the old owner lands after `seq` (its expected sequence is older), so the last
            # journal message now is the last one before the takeover.
            last = await self._last_on(self.subject)
            position = _header_int(last.headers, END, last.seq) if last is not None else 0
            info = await self._api(lambda: jsm.stream_info(self.stream), "stream info")
            self.takeover = Takeover(seq, self.node, self.epoch)
            self._last_seq, self._last_data_seq = seq, last.seq if last is not None else 0
            self._messages = info.state.messages
            log.info("journal %s: %s took over with epoch %d at sequence %d, position %d",
                     self.stream, self.node, self.epoch, seq, position)
            return position
        raise JournalError(f"journal {self.stream}: could not publish a takeover; others keep taking over")

    async def _last_on(self, subject: str) -> Any:
        """The stream's last message on `subject`, or None."""
        try:
            return await self._api(lambda: self.client.js.get_msg(self.stream, subject=subject), "get")
        except NotFoundError:
            return None

    async def _api(self, call: Callable[[], Awaitable[T]], what: str) -> T:
        """A JetStream API call, retried while the cluster cannot answer (`transient.retried`)."""
        return await retried(call, f"journal {self.stream}: {what}", self.give_up_s, lambda exc: JournalError(
            f"journal {self.stream}: {what} failed for {self.give_up_s} s ({exc!r})"))

    async def _publish(self, subject: str, payload: bytes, headers: dict[str, str],
                       landed: Callable[[str], Awaitable[int | None]]) -> int:
        """Publish with `headers` (an expected sequence); retried with the same Msg-Id until
        acknowledged or `give_up_s`. A refusal is `_WrongLast` unless `landed` finds the message
        stored by an earlier attempt (JetStream checks expected sequences before its duplicate
        window, so the retry of a publish whose ack was lost is refused)."""
        loop = asyncio.get_running_loop()
        deadline, attempt = loop.time() + self.give_up_s, 0
        while True:
            began = time.perf_counter()
            try:
                ack = await self.client.js.publish(subject, payload, timeout=self.publish_timeout_s,
                                                   headers=dict(headers))
            except APIError as exc:
                if exc.err_code in WRONG_LAST_SEQUENCE:
                    stored = await landed(headers[MSG_ID])
                    if stored is not None:
                        return stored
                    raise _WrongLast(exc.description or str(exc)) from None
                error: Exception = exc
            except nats.errors.ConnectionClosedError:
                raise JournalError(f"journal {self.stream}: the NATS connection is closed") from None
            except (TimeoutError, nats.errors.Error) as exc:
                error = exc
            else:
                self._counters.acked(time.perf_counter() - began)
                return int(ack.seq)
            attempt += 1
            pause = min(0.05 * attempt, 0.5)
            if loop.time() + pause > deadline:
                raise JournalError(f"journal {self.stream}: a publish was not acknowledged within "
                                   f"{self.give_up_s} s ({error!r}); its records may or may not be stored")
            log.warning("journal %s: publish attempt %d failed (%r); retrying", self.stream, attempt, error)
            await asyncio.sleep(pause)  # back-off between retries

    async def _landed_next(self, msg_id: str) -> int | None:
        """A journal publish: stored if the message right after our last one carries its id."""
        try:
            msg = await self._api(lambda: self.client.js.get_msg(self.stream, seq=self._last_seq + 1), "get")
        except NotFoundError:
            return None
        return int(msg.seq or 0) if (msg.headers or {}).get(MSG_ID) == msg_id else None

    async def _landed_last(self, msg_id: str) -> int | None:
        """A takeover: stored if the last takeover record carries its id."""
        msg = await self._last_on(self.owner_subject)
        return int(msg.seq) if msg is not None and (msg.headers or {}).get(MSG_ID) == msg_id else None

    async def _write_loop(self) -> None:
        while True:
            with self._lock:
                batch, self._queue = self._queue, []
                closing = self._closing
            if batch:
                await self._commit(batch)
                continue
            if closing:
                return
            await self._wake.wait()
            self._wake.clear()

    async def _commit(self, batch: list[_Entry]) -> None:
        group: list[_Entry] = []
        size = 0
        for i, entry in enumerate(batch):
            if entry.data is not None and (not group or size + len(entry.data) <= self._max_message):
                group.append(entry)
                size += len(entry.data)
                continue
            if not await self._flush(group, batch[i:]):
                return
            group, size = ([], 0) if entry.data is None else ([entry], len(entry.data))
            if entry.data is None and entry.done is not None:
                entry.done()  # a rotate marker: everything before it is acknowledged
        await self._flush(group, [])

    async def _flush(self, group: list[_Entry], rest: list[_Entry]) -> bool:
        """Publish one group as one message (none if it has no records), then fire its callbacks."""
        if self.failure is not None:
            self._fail(self.failure, group + rest)
            return False
        count = sum(e.count for e in group)
        if count:
            data = b"".join(e.data for e in group if e.data)
            headers = {EXPECTED: str(self._last_seq), MSG_ID: f"{self.stream}:{self.epoch}:{self._last_seq + 1}",
                       END: str(group[-1].end), COUNT: str(count), EPOCH: str(self.epoch)}
            try:
                seq = await self._publish(self.subject, data, headers, self._landed_next)
            except _WrongLast as exc:
                self._fail(Fenced(self.partition, self.node, self.epoch,
                                  f"JetStream refused the append ({exc}): another owner took over"), group + rest)
                return False
            except JournalError as exc:
                self._fail(exc, group + rest)
                return False
            with self._lock:
                self._last_seq = self._last_data_seq = seq
                self._messages += 1
        now = time.perf_counter()
        with self._lock:
            if group:
                self._durable = group[-1].end
            self._pending -= sum(len(e.data) for e in group if e.data)
            self._space.notify_all()
        for entry in group:
            self._counters.latency(now - entry.at)
            if entry.done is not None:
                try:
                    entry.done()
                except Exception:  # one bad callback must not stall everyone else's acks
                    log.exception("journal on_durable callback failed")
        return True

    def _fail(self, exc: JournalError, dropped: list[_Entry]) -> None:
        with self._lock:
            first = self.failure is None
            if first:
                self.failure = exc
            dropped = dropped + self._queue
            self._queue, self._pending = [], 0
            self._space.notify_all()
        for entry in dropped:
            if entry.data is None and entry.done is not None:
                entry.done()  # rotate waiters wake and see the failure
        if first:
            log.error("journal %s: %s; %d queued appends dropped", self.stream, exc, len(dropped))
            if self.on_lost is not None:
                try:
                    self.on_lost(exc)
                except Exception:
                    log.exception("journal on_lost callback failed")

    # -- on the loop: reading --------------------------------------------------

    async def _end_at_or_after(self, seq: int) -> int:
        """The position after the first journal message at or after `seq` (takeover records are skipped)."""
        msg = await self._api(
            lambda: self.client.js.get_msg(self.stream, seq=seq, subject=self.subject, next=True), "get")
        return _header_int(msg.headers, END, msg.seq or 0)

    async def _find(self, after: int) -> int | None:
        """The first journal message's sequence whose records end past `after`, or None.

        Binary search on x for the first x whose next journal message (at or after x) ends past
        `after`: that end only grows with x, and purges leave gaps, which a next-by-subject get
        steps over."""
        info = await self._api(lambda: self.client.js.stream_info(self.stream), "stream info")
        lo, hi = max(info.state.first_seq, 1), self._last_data_seq
        if not hi or await self._end_at_or_after(hi) <= after:
            return None
        while lo < hi:
            mid = (lo + hi) // 2
            if await self._end_at_or_after(mid) > after:
                hi = mid
            else:
                lo = mid + 1
        msg = await self._api(lambda: self.client.js.get_msg(self.stream, seq=lo, subject=self.subject, next=True),
                              "get")
        return int(msg.seq or 0)

    async def _drop_before(self, position: int) -> None:
        found = await self._find(position)
        keep = self._last_data_seq if found is None else min(found, self._last_data_seq)
        if keep:
            await self._api(lambda: self.client.js.purge_stream(self.stream, seq=keep, subject=self.subject), "purge")
        info = await self._api(lambda: self.client.js.stream_info(self.stream), "stream info")
        with self._lock:
            self._messages = info.state.messages

    async def _puller(self, start: int, subject: str | None = None) -> Puller:
        puller = Puller(self.client.nc, self.client.js, self.stream, start, subject,
                        timeout=self.publish_timeout_s, max_bytes=max(16 << 20, 2 * self._max_message))
        return await self._api(puller.open, "replay consumer")

    def _replay(self, after: int, target: int) -> Iterator[tuple[int, Any]]:
        start = self.client.run(self._find(after), self.give_up_s)
        if start is None or start > target:
            return
        puller = self.client.run(self._puller(start), self.give_up_s)
        try:
            seq, warned, idle_since = start - 1, False, time.monotonic()
            while seq < target:
                msgs = self.client.run(puller.next(self._replay_batch), self.give_up_s)
                if not msgs and time.monotonic() - idle_since > self.give_up_s:
                    raise JournalError(f"journal {self.stream}: replay stalled at sequence {seq} of {target}")
                for msg in msgs:
                    at = msg.metadata.sequence.stream
                    if at <= seq:
                        continue  # a late answer to an earlier request
                    seq, idle_since = at, time.monotonic()
                    if seq > target:
                        break
                    if msg.subject != self.subject:
                        continue  # a takeover record
                    end, count = _header_int(msg.headers, END, seq), _header_int(msg.headers, COUNT, seq)
                    if not warned and after < end - count:
                        log.warning("journal %s: replay after %d, but records up to %d were dropped",
                                    self.stream, after, end - count)
                    warned = True
                    reader = FrameReader(msg.data)
                    yield from ((p, r) for p, r in enumerate(reader, end - count + 1) if p > after)
                    if reader.stop is not StopReason.END or reader.records != count:
                        detail = f"message {seq} holds {reader.records} of {count} records ({reader.detail})"
                        log.error("journal %s: REPLAY STOPPED at record %d: %s", self.stream,
                                  end - count + reader.records, detail)
                        self.recovery_report.issues.append(JournalIssue(
                            f"{self.stream}#{seq}", reader.end, reader.stop.value if reader.stop else "?",
                            "replay stopped", detail, midstream=True))
                        return
        finally:
            if self.client.on_loop:
                self.client.loop.create_task(puller.close())
            else:
                try:
                    self.client.run(puller.close(), self.publish_timeout_s)
                except Exception:
                    log.debug("journal %s: replay consumer cleanup failed", self.stream, exc_info=True)

    async def _takeovers(self) -> list[Takeover]:
        info = await self._api(lambda: self.client.js.stream_info(self.stream, subjects_filter=self.owner_subject),
                               "stream info")
        remaining = (info.state.subjects or {}).get(self.owner_subject, 0)
        out: list[Takeover] = []
        if not remaining:
            return out
        puller = await self._puller(max(info.state.first_seq, 1), self.owner_subject)
        try:
            while len(out) < remaining:
                msgs = await puller.next(remaining - len(out))
                if not msgs:
                    raise JournalError(f"journal {self.stream}: takeover records not readable")
                for msg in msgs:
                    body = msgpack.unpackb(msg.data)
                    seq = msg.metadata.sequence.stream
                    out.append(Takeover(seq, str(body["takeover"]), int(body["epoch"])))
            return out
        finally:
            await puller.close()
