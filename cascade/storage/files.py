"""Snapshot files: streamed atomic writes, verified reads, sets, pruning.

Shard N's snapshot at journal position P is `snapshot-<P:020d>-shard<NN>.msgpack`,
so lexical order is age order; a *set* is every shard's file at one P.
Invariants: a `.msgpack` name only ever holds a complete snapshot (written as
`.tmp` in ~1 MiB chunks, fsynced, renamed, directory fsynced); a snapshot is
trusted only once its trailer's record count and body checksum match what was
read; an unknown format or version is refused, never skipped.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import re
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import IO, Any

from .codec import (
    CHUNK_BYTES,
    MAX_FRAME_BYTES,
    CorruptSnapshot,
    FrameReader,
    SnapshotEncoder,
    StopReason,
    check_header,
    check_trailer,
    make_header,
)

__all__ = [
    "SnapshotInfo", "SnapshotSet", "list_snapshots", "newest_valid_set", "prune_snapshots", "read_snapshot",
    "snapshot_path", "verify_snapshot", "write_snapshot",
]

log = logging.getLogger("cascade.snapshots")
_NAME = re.compile(r"^snapshot-(\d{20})-shard(\d+)\.(msgpack|tmp)$")
_NOTHING: Any = object()


@dataclass(frozen=True)
class SnapshotInfo:
    path: str
    shard: int
    journal_position: int
    records: int
    bytes: int
    seconds: float
    header: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)


@dataclass(frozen=True)
class SnapshotSet:
    journal_position: int
    paths: dict[int, str] = field(hash=False)  # shard -> path


def snapshot_path(directory: str | os.PathLike[str], journal_position: int, shard: int, suffix: str = ".msgpack") -> str:
    return os.path.join(os.fspath(directory), f"snapshot-{journal_position:020d}-shard{shard:02d}{suffix}")


def _fsync_dir(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_snapshot(
    directory: str | os.PathLike[str], shard: int, header: dict[str, Any], records: Iterable[Any]
) -> SnapshotInfo:
    """Stream `records` to shard `shard`'s snapshot at `header["journal_position"]`.

    `header` needs `journal_position`; `counts` and `created_at` are optional,
    any other keys are kept. On any failure the `.tmp` file is removed.
    """
    began = time.perf_counter()
    extra = dict(header)
    position = extra.pop("journal_position")
    full = make_header(shard, position, extra.pop("counts", {}), extra.pop("created_at", time.time()), **extra)
    encoder = SnapshotEncoder(full)
    directory = os.fspath(directory)
    os.makedirs(directory, exist_ok=True)
    tmp, final = snapshot_path(directory, position, shard, ".tmp"), snapshot_path(directory, position, shard)
    try:
        with open(tmp, "wb") as f:
            size = _stream(f, encoder, iter(records))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, final)
        _fsync_dir(directory)  # the rename itself must survive a crash
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return SnapshotInfo(final, shard, position, encoder.records, size, time.perf_counter() - began, full)


def _stream(f: IO[bytes], encoder: SnapshotEncoder, records: Iterator[Any]) -> int:
    chunk, chunk_bytes, size, batch_size = [encoder.begin()], 0, 0, 1024
    while batch := list(itertools.islice(records, batch_size)):
        data = encoder.encode(batch)
        chunk.append(data)
        chunk_bytes += len(data)
        if chunk_bytes >= CHUNK_BYTES:
            size += f.write(b"".join(chunk))
            chunk, chunk_bytes = [], 0
        # Aim a batch at ~1/4 chunk whatever the record size, so memory stays near one chunk.
        batch_size = max(16, min(16384, CHUNK_BYTES * len(batch) // (4 * len(data))))
    chunk.append(encoder.end())
    return size + f.write(b"".join(chunk))


def read_snapshot(path: str | os.PathLike[str], *, decode: bool = True) -> tuple[dict[str, Any], Iterator[Any]]:
    """The header now, and an iterator of the body records that checks the trailer when exhausted.

    The iterator raises CorruptSnapshot at the end (after yielding every
    readable record) if the data is damaged or the trailer does not match:
    callers must not keep what they built from it until it is exhausted.
    """
    path = os.fspath(path)
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) == 8 and 0 < int.from_bytes(head[:4], "little") <= MAX_FRAME_BYTES:  # never a 4 GiB read
            head += f.read(int.from_bytes(head[:4], "little"))
    reader = FrameReader(head)
    records = list(reader)
    if reader.stop is not StopReason.END or len(records) != 1:
        raise CorruptSnapshot(path, 0, f"unreadable header ({reader.detail or 'empty file'})")
    return check_header(records[0], path), _body(path, head, decode)


def _body(path: str, head: bytes, decode: bool) -> Iterator[Any]:
    with open(path, "rb") as f:  # opened on first next(), so an unread body holds no file
        if f.read(len(head)) != head:
            raise CorruptSnapshot(path, 0, "file replaced while being read")
        reader = FrameReader(f, offset=len(head), decode=decode)
        last = _NOTHING
        for record in reader:  # one behind: the last frame is the trailer, whatever a body record looks like
            if last is not _NOTHING:
                yield last
            last = record
        if reader.stop is not StopReason.END:
            raise CorruptSnapshot(path, reader.end, f"{reader.stop.value if reader.stop else '?'}: {reader.detail}")
        if last is _NOTHING:
            raise CorruptSnapshot(path, reader.end, "trailer missing: the snapshot was cut short")
        if not decode:
            f.seek(reader.last_start)
            last = next(iter(FrameReader(f.read(reader.end - reader.last_start))))
        check_trailer(last, reader.records - 1, reader.checksum, path, reader.last_start)


def verify_snapshot(path: str | os.PathLike[str], *, decode: bool = True) -> SnapshotInfo:
    """A full pass over the file; CorruptSnapshot/UnsupportedFormat if it is not sound."""
    began = time.perf_counter()
    path = os.fspath(path)
    header, body = read_snapshot(path, decode=decode)
    records = sum(1 for _ in body)
    name = _NAME.match(os.path.basename(path))
    if name and (int(name.group(1)), int(name.group(2))) != (header["journal_position"], header["shard"]):
        raise CorruptSnapshot(path, 0, f"header says shard {header['shard']} at {header['journal_position']}")
    seconds = time.perf_counter() - began
    return SnapshotInfo(path, header["shard"], header["journal_position"], records, os.path.getsize(path), seconds, header)


def _scan(directory: str) -> tuple[dict[int, dict[int, str]], list[str]]:
    sets: dict[int, dict[int, str]] = {}
    tmps: list[str] = []
    for entry in sorted(os.listdir(directory)):
        if m := _NAME.match(entry):
            if m.group(3) == "tmp":
                tmps.append(os.path.join(directory, entry))
            else:
                sets.setdefault(int(m.group(1)), {})[int(m.group(2))] = os.path.join(directory, entry)
    return sets, tmps


def list_snapshots(directory: str | os.PathLike[str]) -> list[SnapshotSet]:
    """Complete-named snapshot files grouped by journal position, newest first."""
    sets, _ = _scan(os.fspath(directory))
    return [SnapshotSet(position, sets[position]) for position in sorted(sets, reverse=True)]


def prune_snapshots(directory: str | os.PathLike[str], keep: int, shards: int | None = None) -> list[str]:
    """Keep the newest `keep` complete sets (all of 0..shards-1; default: as many
    shards as the fullest set); delete every set older than the oldest kept and
    all `.tmp` leftovers. Call it when no snapshot is being written. Returns
    the removed paths."""
    if keep < 1:
        raise ValueError(f"keep {keep} is not allowed; keep at least 1 snapshot set")
    directory = os.fspath(directory)
    sets, removed = _scan(directory)
    wanted = set(range(shards if shards is not None else max(map(len, sets.values()), default=0)))
    complete = [p for p in sorted(sets, reverse=True) if wanted <= sets[p].keys()][:keep]
    if complete:
        removed += [path for p in sets if p < complete[-1] for path in sets[p].values()]
    for path in removed:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
    return removed


def newest_valid_set(directory: str | os.PathLike[str], shards: int) -> SnapshotSet | None:
    """The newest set in which every shard 0..shards-1 verifies, or None.

    A set failing its checksum is skipped loudly for the one before; an
    unsupported format is raised, not skipped (falling back past a newer
    format would silently lose its data).
    """
    for candidate in list_snapshots(directory):
        missing = set(range(shards)) - candidate.paths.keys()
        if missing:
            log.warning("snapshot set at journal position %d lacks shards %s; skipped",
                        candidate.journal_position, sorted(missing))
            continue
        try:
            for shard in range(shards):
                verify_snapshot(candidate.paths[shard], decode=False)
        except (CorruptSnapshot, OSError) as exc:
            log.error("SNAPSHOT SET AT JOURNAL POSITION %d FAILED VERIFICATION; falling back to the one before: %s",
                      candidate.journal_position, exc)
            continue
        return candidate
    return None
