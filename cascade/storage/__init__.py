"""Storage: msgpack records in a journal and in snapshot files. Knows no engine.

Records are any msgpack-serialisable values (arrays come back as tuples);
the engine decides what they mean. `codec` frames records and knows the
snapshot header/trailer (no I/O), `journal` appends and replays them with
group commit, `files` writes, verifies and prunes snapshots.
"""

from __future__ import annotations

from .codec import (
    FORMAT,
    MAX_FRAME_BYTES,
    VERSION,
    CorruptSnapshot,
    FrameReader,
    SnapshotEncoder,
    SnapshotError,
    StopReason,
    UnsupportedFormat,
    check_header,
    encode_record,
    encode_records,
    iter_frames,
    make_header,
)
from .files import (
    SnapshotInfo,
    SnapshotSet,
    list_snapshots,
    newest_valid_set,
    prune_snapshots,
    read_snapshot,
    snapshot_path,
    verify_snapshot,
    write_snapshot,
)
from .journal import (
    FileJournal,
    Journal,
    JournalClosed,
    JournalError,
    JournalIssue,
    JournalStats,
    MemoryJournal,
    RecoveryReport,
)

__all__ = [
    "FORMAT",
    "MAX_FRAME_BYTES",
    "VERSION",
    "CorruptSnapshot",
    "FileJournal",
    "FrameReader",
    "Journal",
    "JournalClosed",
    "JournalError",
    "JournalIssue",
    "JournalStats",
    "MemoryJournal",
    "RecoveryReport",
    "SnapshotEncoder",
    "SnapshotError",
    "SnapshotInfo",
    "SnapshotSet",
    "StopReason",
    "UnsupportedFormat",
    "check_header",
    "encode_record",
    "encode_records",
    "iter_frames",
    "list_snapshots",
    "make_header",
    "newest_valid_set",
    "prune_snapshots",
    "read_snapshot",
    "snapshot_path",
    "verify_snapshot",
    "write_snapshot",
]
