"""A shard's snapshot, taken in slices while the shard keeps serving.

At `begin` the shard notes the journal position P its state stands at,
copies its counters and the lists of its sends and recipient ids, and flips
its snapshot mark. Each `slice` then writes the next few thousand objects
not yet written. An object about to change before its slice comes is
written first (`touch`: copy on write), so every object is written exactly
as it stood at P, and the journal after P replays onto the file exactly.
Objects created after P carry the new mark from birth and are left out.
Encoding and file I/O happen on a writer thread behind a bounded queue.
"""

from __future__ import annotations

import queue
import threading
import time
from typing import Any, Iterator, Protocol

from ..domain.recipients import Recipient
from ..domain.send import SNAPSHOT_MARK, Send
from ..storage.journal import Journal
from .counters import CounterBook
from .engagement import EngagementBook
from .snapshot_records import recipient_record, send_record, shape_record
from .throttle import ThrottleBook


class ShardState(Protocol):
    """What a snapshot reads of its shard (engine/shard.py's ShardState)."""

    index: int
    journal: Journal | None
    send_mark: int
    rcpt_mark: int
    sends: dict[int, Send]
    recipients: dict[str, Recipient]
    book: CounterBook
    campaign_rows: dict[str, bytearray]
    throttle: ThrottleBook
    engagement: EngagementBook
    clock: Any

    def throttle_window(self, template: str) -> float: ...

__all__ = ["ShardSnapshot", "SLICE"]

SLICE = 4_000  # objects a slice: a few milliseconds of shard time
_DONE = None


class ShardSnapshot:
    def __init__(self, state: ShardState, directory: str, set_position: int, file_shard: int,
                 write: Any, pack: Any) -> None:
        self._pack = pack  # packs on the shard's thread, while the objects are as they were
        self._shapes: dict[int, int] = {}  # id(send.counters) -> shape index in this file
        self.position = state.journal.position() if state.journal is not None else 0
        self.send_mark = state.send_mark = state.send_mark ^ SNAPSHOT_MARK
        self.rcpt_mark = state.rcpt_mark = state.rcpt_mark ^ 1
        self._sends = list(state.sends.values())  # a purged one was written (touched) first
        self._rids = list(state.recipients)
        self._cursor = 0
        self._rcursor = 0
        self._queue: queue.Queue[list[Any] | None] = queue.Queue(maxsize=16)  # bounds memory
        self.info: Any = None
        self.error: BaseException | None = None
        self._drained = False
        header = {
            "journal_position": set_position, "shard_position": self.position, "kind": "shard",
            "engine_shard": state.index, "created_at": time.time(),
            "counts": {"sends": len(self._sends), "recipients": len(self._rids)},
        }
        kept = [*state.throttle.records(state.clock.now(), state.throttle_window),
                *state.engagement.records()]  # copies, as of this journal position
        self._queue.put([pack(("counters", state.book.to_record())), pack(("kept", kept))]
                        + [pack(("rows", cid, bytes(bits))) for cid, bits in state.campaign_rows.items()])
        self._thread = threading.Thread(target=self._write, args=(write, directory, file_shard, header),
                                        name=f"cascade-snapshot-{state.index}", daemon=True)
        self._thread.start()

    def _records(self) -> Iterator[Any]:
        while True:
            batch = self._queue.get()
            if batch is _DONE:
                self._drained = True
                return
            yield from batch

    def _write(self, write: Any, directory: str, file_shard: int, header: dict[str, Any]) -> None:
        try:
            self.info = write(directory, file_shard, header, self._records())
        except BaseException as exc:  # reported to the coordinator by `result`
            self.error = exc
            while not self._drained and self._queue.get() is not _DONE:  # keep the shard from blocking
                pass

    def _shape(self, send: Send, out: list[Any]) -> int:
        shape = self._shapes.get(id(send.counters))
        if shape is None:
            shape = self._shapes[id(send.counters)] = len(self._shapes)
            out.append(self._pack(shape_record(shape, send)))
        return shape

    def touch_send(self, send: Send) -> None:
        if (send.answers & SNAPSHOT_MARK) != self.send_mark:
            batch: list[Any] = []
            record = send_record(send, self._shape(send, batch))
            batch.append(self._pack(("S*", [record])))
            self._queue.put(batch)
            send.answers ^= SNAPSHOT_MARK

    def touch_recipient(self, rcpt: Recipient) -> None:
        if rcpt.mark != self.rcpt_mark:
            self._queue.put([self._pack(("R*", [recipient_record(rcpt)]))])
            rcpt.mark = self.rcpt_mark

    def slice(self, state: ShardState) -> bool:
        """Write the next slice; True once everything is written."""
        rcpts: list[Any] = []
        rids, recipients, mark = self._rids, state.recipients, self.rcpt_mark
        while self._rcursor < len(rids) and len(rcpts) < SLICE:
            rcpt = recipients.get(rids[self._rcursor])
            self._rcursor += 1
            if rcpt is not None and rcpt.mark != mark:
                rcpts.append(recipient_record(rcpt))
                rcpt.mark = mark
        sends: list[Any] = []
        batch: list[Any] = []
        todo, send_mark, shapes = self._sends, self.send_mark, self._shapes
        stop = min(len(todo), self._cursor + SLICE - len(rcpts))
        last_counters: Any = None
        shape = 0
        for send in todo[self._cursor:stop]:
            answers = send.answers
            if (answers & SNAPSHOT_MARK) == send_mark:
                continue  # written already, before it changed
            if send.counters is not last_counters:
                last_counters = send.counters
                known = shapes.get(id(last_counters))
                shape = self._shape(send, batch) if known is None else known
            # send_record(), inlined: this loop is the snapshot's cost per send.
            sends.append((send.key, shape, send.recipient.id, send.data, send.created, send.status, send.current,
                          send.steps, send.sig, answers & ~SNAPSHOT_MARK, send.deadline, send.notes))
            send.answers = answers ^ SNAPSHOT_MARK
        self._cursor = stop
        if rcpts:
            batch.append(self._pack(("R*", rcpts)))
        if sends:
            batch.append(self._pack(("S*", sends)))
        if batch:
            self._queue.put(batch)
        done = self._cursor >= len(todo) and self._rcursor >= len(rids)
        if done:
            self._queue.put(_DONE)
        return done

    def result(self, timeout: float | None = None) -> Any:
        self._thread.join(timeout)
        if self.error is not None:
            raise self.error
        return self.info
