"""The journal: msgpack records appended in order, group-committed to segments.

Positions count records, not bytes: the k-th record ever appended has
position k, and `append` returns the position after its records. Segment
`journal-<start:020d>.log` holds the records after position `start`, so the
file names alone carry positions across restarts and dropped segments.

Invariants: records reach storage in position order; each append's
`on_durable` fires exactly once, in append order, after its records are
written and (fsync "batch"/"always") fdatasync'ed; one writer thread owns the
active segment; a damaged tail is cut off on open and reported, never trusted
and never a crash; replay stops, loudly, at damage it cannot explain.
"""

from __future__ import annotations

import bisect
import collections
import contextlib
import fcntl
import functools
import itertools
import logging
import os
import re
import shutil
import threading
import time
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from .codec import FRAME_HEADER, MAX_FRAME_BYTES, FrameReader, StopReason, encode_records

__all__ = [
    "FSYNC_BUCKETS", "FileJournal", "Journal", "JournalClosed", "JournalCounters", "JournalError", "JournalIssue",
    "JournalStats", "MemoryJournal", "RecoveryReport", "segment_name",
]

log = logging.getLogger("cascade.journal")
Callback = Callable[[], None]
Opener = Callable[[], contextlib.AbstractContextManager[Any]]
FSYNC_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
_SEGMENT = re.compile(r"^journal-(\d{20})\.log$")


def segment_name(start: int) -> str:
    return f"journal-{start:020d}.log"


class JournalError(Exception):
    """The journal cannot accept writes (writer failed, directory in use)."""


class JournalClosed(JournalError):
    pass


@dataclass(frozen=True)
class JournalIssue:
    """Damage found on open (and cut off) or during replay (where replay stopped)."""

    segment: str
    offset: int  # where the valid data ends
    reason: str  # a StopReason value, or "short-segment"
    action: str  # "truncated" or "replay stopped"
    detail: str
    dropped_bytes: int = 0
    midstream: bool = False  # valid frames follow the damage: not a crash's torn tail


@dataclass
class RecoveryReport:
    """What opening the journal found: the position it continues from and any issues (replay adds its own)."""

    position: int = 0
    segments: int = 0
    issues: list[JournalIssue] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not self.issues


@dataclass(frozen=True)
class JournalStats:
    """Plain figures for a Prometheus collector to publish at scrape time."""

    position: int
    durable_position: int
    appends: int
    records: int
    bytes: int
    writes: int
    fsyncs: int
    fsync_seconds_sum: float
    fsync_seconds_max: float
    fsync_buckets: tuple[tuple[float, int], ...]  # cumulative (le, count), Prometheus style
    recent_fsync_seconds: tuple[float, ...]
    pending_bytes: int
    backpressure_waits: int
    segments: int


class Journal(Protocol):
    """What the engine relies on; FileJournal and MemoryJournal both pass one behaviour suite.

    append: queue records (thread-safe), return the position after them; never
    waits for an fsync (only for back-pressure); `on_durable` fires once they
    are durable. replay: (position, record) after `after`, for everything
    appended before the call. rotate: new segment at the current position,
    returned. drop_before: delete segments whose records all lie at or before
    `position`. close: write, sync, stop; later appends raise JournalClosed.
    """

    recovery_report: RecoveryReport

    def append(self, records: Sequence[Any], on_durable: Callback | None = None) -> int: ...
    def position(self) -> int: ...
    def replay(self, after: int = 0) -> Iterator[tuple[int, Any]]: ...
    def rotate(self) -> int: ...
    def drop_before(self, position: int) -> None: ...
    def close(self) -> None: ...
    def stats(self) -> JournalStats: ...


def _fire(callbacks: Sequence[Callback | None]) -> None:
    for callback in callbacks:
        if callback is not None:
            try:
                callback()
            except Exception:  # one bad callback must not stall everyone else's acks
                log.exception("journal on_durable callback failed")


def _frame_ok(pread: Callable[[int, int], bytes], offset: int) -> bool:
    head = pread(offset, 8)
    if len(head) < 8:
        return False
    length, check = FRAME_HEADER.unpack(head)
    payload = pread(offset + 8, length) if 0 < length <= MAX_FRAME_BYTES else b""
    return len(payload) == length > 0 and bool(zlib.crc32(payload) == check)


def _examine_tail(label: str, reader: FrameReader, size: int, pread: Callable[[int, int], bytes]) -> JournalIssue | None:
    """What a scan that stopped early found; None for a clean end."""
    if reader.stop is StopReason.END:
        return None
    assert reader.stop is not None
    midstream = False
    if reader.stop is not StopReason.TORN:  # a sane length with a valid frame after it: damage, not a torn write
        length = FRAME_HEADER.unpack(pread(reader.end, 8))[0] if size - reader.end >= 8 else 0
        midstream = 0 < length <= MAX_FRAME_BYTES and _frame_ok(pread, reader.end + 8 + length)
    issue = JournalIssue(label, reader.end, reader.stop.value, "truncated", reader.detail, size - reader.end, midstream)
    if midstream:
        log.error("journal %s: %s; valid records after it are LOST (%d bytes cut)", label, reader.detail, issue.dropped_bytes)
    else:
        log.warning("journal %s: cut %d bytes of damaged tail (%s)", label, issue.dropped_bytes, reader.detail)
    return issue


class JournalCounters:
    """Plain counters (no Prometheus calls on the hot path); `freeze` makes a
    JournalStats. `fsync` is the moment records become durable: an fsync
    here, a replicated publish's ack for the cluster's stream journal."""

    def __init__(self) -> None:
        self.appends = self.records = self.bytes = self.writes = self.fsyncs = self.waits = 0
        self.fsync_sum = self.fsync_max = 0.0
        self.buckets = [0] * (len(FSYNC_BUCKETS) + 1)
        self.recent: collections.deque[float] = collections.deque(maxlen=256)

    def appended(self, records: int, size: int) -> None:
        self.appends, self.records, self.bytes = self.appends + 1, self.records + records, self.bytes + size

    def fsync(self, seconds: float) -> None:
        self.fsyncs += 1
        self.fsync_sum += seconds
        self.fsync_max = max(self.fsync_max, seconds)
        self.buckets[bisect.bisect_left(FSYNC_BUCKETS, seconds)] += 1
        self.recent.append(seconds)

    def freeze(self, position: int, durable: int, pending: int, segments: int) -> JournalStats:
        cumulative, total = [], 0
        for bound, count in zip((*FSYNC_BUCKETS, float("inf")), self.buckets):
            total += count
            cumulative.append((bound, total))
        return JournalStats(
            position, durable, self.appends, self.records, self.bytes, self.writes, self.fsyncs,
            self.fsync_sum, self.fsync_max, tuple(cumulative), tuple(self.recent), pending, self.waits, segments,
        )


class _Segments:
    """Segment bookkeeping and replay shared by both journals; subclasses say how to read one."""

    recovery_report: RecoveryReport
    _lock: threading.Lock
    _starts: list[int]

    def _open_segment(self, start: int, active: bool) -> tuple[Opener, int | None]:
        """How to open segment `start` for reading later, and how many bytes of it to read."""
        raise NotImplementedError

    def replay(self, after: int = 0) -> Iterator[tuple[int, Any]]:
        """(position, record) for every record appended before the call and after `after`, in order."""
        with self._lock:
            self._wait_written()
            starts = list(self._starts)
            plan = [(s, self._open_segment(s, i == len(starts) - 1)) for i, s in enumerate(starts)]
        if starts and after < starts[0]:
            log.warning("journal replay after %d, but records up to %d were dropped", after, starts[0])
        return self._replay(plan, starts[1:] + [None], after)

    def _replay(self, plan: list[Any], ends: list[int | None], after: int) -> Iterator[tuple[int, Any]]:
        for (start, (opener, limit)), end in zip(plan, ends):
            if end is not None and end <= after:
                continue
            with opener() as source:
                reader = FrameReader(source, limit=limit)
                numbered = enumerate(reader, start + 1)
                if after > start:  # records at or before `after` are read (to find frames) but not yielded
                    for _ in itertools.islice(numbered, after - start):
                        pass
                yield from numbered
            position = start + reader.records
            short = end is not None and position != end and reader.stop is StopReason.END
            if reader.stop is not StopReason.END or short:
                reason = "short-segment" if short else reader.stop.value if reader.stop else "?"
                detail = f"{reader.detail or 'segment ends early'}; records {position + 1}..{end or '?'} not replayed"
                log.error("journal %s: REPLAY STOPPED at record %d: %s", segment_name(start), position, detail)
                self.recovery_report.issues.append(
                    JournalIssue(segment_name(start), reader.end, reason, "replay stopped", detail, midstream=True)
                )
                return

    def _wait_written(self) -> None:
        """Called with the lock held: return once every record appended so far is in storage."""

    def _take_droppable(self, position: int) -> list[int]:
        """Remove from the bookkeeping the segments whose records all lie at or before `position`."""
        doomed = [s for s, nxt in zip(self._starts, self._starts[1:]) if nxt <= position]
        del self._starts[: len(doomed)]
        return doomed


class MemoryJournal(_Segments):
    """The journal in memory: same positions, segments, recovery and replay; no thread.

    `storage` (segment start -> frames) plays the directory: pass the same dict
    to "reopen". `on_durable` runs in the appending thread before `append`
    returns, which FileJournal may also do; engines must accept either.
    """

    def __init__(self, storage: dict[int, bytearray] | None = None) -> None:
        self.storage = {} if storage is None else storage
        self._lock = threading.Lock()
        self._closed = False
        self._counters = JournalCounters()
        self._starts = sorted(self.storage) or [0]
        tail = self.storage.setdefault(self._starts[-1], bytearray())
        reader = FrameReader(bytes(tail), decode=False)
        for _ in reader:
            pass
        issue = _examine_tail(segment_name(self._starts[-1]), reader, len(tail), lambda o, n: bytes(tail[o : o + n]))
        del tail[reader.end :]
        self._position = self._starts[-1] + reader.records
        self.recovery_report = RecoveryReport(self._position, len(self._starts), [issue] if issue else [])

    def crash_image(self) -> dict[int, bytearray]:
        """A copy of the storage as a crash right now would leave it (tests of recovery)."""
        with self._lock:
            return {start: bytearray(data) for start, data in self.storage.items()}

    def append(self, records: Sequence[Any], on_durable: Callback | None = None) -> int:
        data = encode_records(records)
        with self._lock:
            if self._closed:
                raise JournalClosed("journal is closed")
            self.storage[self._starts[-1]] += data
            self._position += len(records)
            position = self._position
            c = self._counters
            c.appended(len(records), len(data))
            c.writes += 1
        _fire((on_durable,))
        return position

    def position(self) -> int:
        return self._position

    def rotate(self) -> int:
        with self._lock:
            if self._closed:
                raise JournalClosed("journal is closed")
            if self.storage[self._starts[-1]]:
                self._starts.append(self._position)
                self.storage[self._position] = bytearray()
            return self._starts[-1]

    def drop_before(self, position: int) -> None:
        with self._lock:
            for start in self._take_droppable(position):
                del self.storage[start]

    def close(self) -> None:
        self._closed = True

    def stats(self) -> JournalStats:
        with self._lock:
            return self._counters.freeze(self._position, self._position, 0, len(self._starts))

    def _open_segment(self, start: int, active: bool) -> tuple[Opener, int | None]:
        data = bytes(self.storage[start])  # a copy: appends may resize the original under the reader
        return (lambda: contextlib.nullcontext(data)), None


class FileJournal(_Segments):
    """The journal in segment files under `directory`, written by one thread with group commit.

    fsync "batch": each write group (everything queued since the last one) is
    one write and one fdatasync, and a group starts at least `sync_interval_s`
    after the previous one began: under load one sync covers the appends of
    that interval (an fdatasync costs the kernel about as much for one record
    as for a thousand), while an append that comes after a quiet spell is
    synced at once. "always": one fdatasync per append; "off": none until
    close (callbacks fire once written). Appends block while more than
    `max_pending_bytes` are queued or in flight. `fdatasync` is injectable
    for tests and fault injection.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        fsync: str = "batch",
        *,
        max_pending_bytes: int = 64 << 20,
        segment_bytes: int = 256 << 20,
        sync_interval_s: float = 0.0,
        fdatasync: Callable[[int], None] = os.fdatasync,
    ) -> None:
        if fsync not in ("batch", "always", "off"):
            raise ValueError(f"fsync {fsync!r} is not allowed; use one of batch, always, off")
        if not 0.0 <= sync_interval_s <= 1.0:
            raise ValueError(f"sync_interval_s {sync_interval_s!r} is not allowed; it must be from 0 to 1 s")
        self.directory, self.fsync = os.fspath(directory), fsync
        self._sync_interval = sync_interval_s if fsync == "batch" else 0.0
        self._next_group = 0.0  # perf_counter time before which no new group starts (batch mode)
        self._max_pending, self._segment_bytes, self._fdatasync = max_pending_bytes, segment_bytes, fdatasync
        os.makedirs(self.directory, exist_ok=True)
        self._lock_fd = os.open(os.path.join(self.directory, "journal.lock"), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # two writers would interleave frames
        except BlockingIOError:
            os.close(self._lock_fd)
            raise JournalError(f"journal directory {self.directory} is in use by another journal") from None
        names = (_SEGMENT.match(n) for n in os.listdir(self.directory))
        self._starts = sorted(int(m.group(1)) for m in names if m)
        try:
            if not self._starts:
                os.close(self._create_segment(0))
                self._starts.append(0)
            self.recovery_report = RecoveryReport(segments=len(self._starts))
            self._position = self._durable = self._starts[-1] + self._recover_tail()
            self.recovery_report.position = self._position
            self._fd = os.open(self._path(self._starts[-1]), os.O_WRONLY | os.O_APPEND)
        except BaseException:
            os.close(self._lock_fd)
            raise
        self._size = os.fstat(self._fd).st_size
        self._dirty = False
        self._lock = threading.Lock()
        self._work = threading.Condition(self._lock)  # the writer waiting for a non-empty queue
        self._space = threading.Condition(self._lock)  # appenders waiting for back-pressure to ease; replay
        self._queue: list[tuple[bytes | None, int, Any]] = []
        self._pending = 0
        self._closing = self._closed = False
        self.failure: BaseException | None = None
        self._counters = JournalCounters()
        self._writer = threading.Thread(target=self._run, name=f"journal-writer:{self.directory}", daemon=True)
        self._writer.start()

    # -- callers' side ---------------------------------------------------------

    def append(self, records: Sequence[Any], on_durable: Callback | None = None) -> int:
        data = encode_records(records)  # outside the lock: shards encode in parallel with the writer
        with self._lock:
            self._check_open()
            if self._pending and self._pending + len(data) > self._max_pending:
                self._counters.waits += 1
                while self._pending and self._pending + len(data) > self._max_pending:
                    self._space.wait()
                    self._check_open()
            self._pending += len(data)
            self._position += len(records)
            self._queue.append((data, len(records), on_durable))
            self._counters.appended(len(records), len(data))
            if len(self._queue) == 1:  # the writer only sleeps on an empty queue
                self._work.notify()
            return self._position

    def position(self) -> int:
        return self._position

    def rotate(self) -> int:
        """Start a new segment at the current position (no-op if the active one is empty)."""
        done = threading.Event()
        with self._lock:
            self._check_open()
            start = self._position
            self._queue.append((None, start, done))
            if len(self._queue) == 1:
                self._work.notify()
        done.wait()
        with self._lock:
            self._check_open(closing_ok=True)
        return start

    def drop_before(self, position: int) -> None:
        with self._lock:
            doomed = self._take_droppable(position)
        for start in doomed:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._path(start))

    def close(self) -> None:
        """Write and sync everything queued, stop the writer, release the directory."""
        with self._lock:
            if self._closing:
                return
            self._closing = True
            self._work.notify_all()
        self._writer.join()
        try:
            if self.failure is None and self._dirty:
                self._sync()
        finally:
            os.close(self._fd)
            os.close(self._lock_fd)  # releases the flock
            with self._lock:
                self._closed = True

    def __enter__(self) -> FileJournal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def stats(self) -> JournalStats:
        with self._lock:
            return self._counters.freeze(self._position, self._durable, self._pending, len(self._starts))

    def _check_open(self, closing_ok: bool = False) -> None:
        if self.failure is not None:
            raise JournalError(f"journal writer failed: {self.failure!r}") from self.failure
        if self._closing and not closing_ok:
            raise JournalClosed(f"journal {self.directory} is closed")

    # -- files -----------------------------------------------------------------

    def _path(self, start: int) -> str:
        return os.path.join(self.directory, segment_name(start))

    def _create_segment(self, start: int) -> int:
        fd = os.open(self._path(start), os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_EXCL, 0o644)
        if self.fsync != "off":  # the new name must survive a crash before its records count as durable
            dir_fd = os.open(self.directory, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        return fd

    def _recover_tail(self) -> int:
        """Scan the last segment, cut any damaged tail; the number of valid records in it."""
        path = self._path(self._starts[-1])
        with open(path, "r+b") as f:
            reader = FrameReader(f, decode=False)
            for _ in reader:
                pass
            size = os.fstat(f.fileno()).st_size
            issue = _examine_tail(os.path.basename(path), reader, size, lambda o, n: os.pread(f.fileno(), n, o))
            if issue is not None:
                if issue.midstream:  # keep the evidence before cutting records that looked valid
                    shutil.copyfile(path, f"{path}.corrupt-{int(time.time())}")
                f.truncate(reader.end)
                f.flush()
                os.fsync(f.fileno())
                self.recovery_report.issues.append(issue)
        return reader.records

    def _wait_written(self) -> None:
        while self._durable < self._position and self.failure is None:
            self._space.wait()

    def _open_segment(self, start: int, active: bool) -> tuple[Opener, int | None]:
        # Opened when replay gets there, not now; the active one only up to what the writer has finished.
        return functools.partial(open, self._path(start), "rb"), (self._size if active else None)

    # -- writer thread ---------------------------------------------------------

    def _run(self) -> None:
        batch: list[tuple[bytes | None, int, Any]] = []
        try:
            while True:
                with self._lock:
                    while not self._queue and not self._closing:
                        self._work.wait()
                    # Appenders notify only an empty queue, so this waits out the interval unless closing.
                    while not self._closing and (delay := self._next_group - time.perf_counter()) > 0:
                        self._work.wait(delay)
                    batch, self._queue = self._queue, []
                if not batch:
                    return
                self._commit(batch)
        except BaseException as exc:  # a failed fdatasync cannot be retried safely: stop accepting writes
            log.critical("journal writer failed; no further writes will be acknowledged", exc_info=True)
            with self._lock:
                self.failure = exc
                batch, self._queue = batch + self._queue, []
                self._space.notify_all()
            for data, _, done in batch:
                if data is None:
                    done.set()

    def _commit(self, batch: list[tuple[bytes | None, int, Any]]) -> None:
        run: list[tuple[bytes | None, int, Any]] = []
        for entry in batch:
            if entry[0] is None:  # rotate marker: everything before it goes to the old segment
                self._flush(run)
                run = []
                self._rotate(entry[1])
                entry[2].set()
            else:
                run.append(entry)
        self._flush(run)
        if self._size >= self._segment_bytes:
            self._rotate(self._durable)

    def _flush(self, run: list[tuple[bytes | None, int, Any]]) -> None:
        if not run:
            return
        groups = [run[i : i + 1] for i in range(len(run))] if self.fsync == "always" else [run]
        for group in groups:
            data = group[0][0] if len(group) == 1 else b"".join([e[0] for e in group])  # type: ignore[misc]
            assert data is not None
            self._write(data)
            if self.fsync != "off" and self._dirty:
                self._sync()
            with self._lock:
                self._pending -= len(data)
                self._durable += sum(e[1] for e in group)
                self._space.notify_all()
            _fire([e[2] for e in group])

    def _write(self, data: bytes) -> None:
        if not data:  # an empty append: nothing to write, and nothing new to sync
            return
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view) :]
        self._size += len(data)
        self._dirty = True
        self._counters.writes += 1

    def _sync(self) -> None:
        began = time.perf_counter()
        self._next_group = began + self._sync_interval
        self._fdatasync(self._fd)
        elapsed = time.perf_counter() - began
        with self._lock:  # stats() copies the deque under the lock
            self._counters.fsync(elapsed)
        self._dirty = False

    def _rotate(self, start: int) -> None:
        if start == self._starts[-1]:
            return  # the active segment is empty: a second file with the same start would collide
        fd = self._create_segment(start)
        os.close(self._fd)
        with self._lock:  # replay plans read starts and size together
            self._starts.append(start)
            self._fd, self._size = fd, 0

