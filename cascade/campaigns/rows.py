"""A campaign's recipients as a rows file, and the upload that writes it.

A row is `(recipient id, recipient fields or None, packed data or None)`;
its index is its position in the file (0-based), which is how the fan-out,
the journal (`origin = (campaign, None, row)`) and the started-rows bitmaps
name it. Rows are msgpack frames (`snapshots.codec`), written in chunks to
`<dir>/<campaign>.rows.tmp`, fsynced and renamed before the campaign is
created, so a campaign record never names rows that are not on disk.
Without a directory (an engine without storage) the frames stay in memory
and travel inline in the campaign record instead.

`Upload` validates each row as it comes (recipient id and addresses, as
`PUT /v1/recipients` does) and skips duplicates: the first row of a
recipient wins, later ones are reported. Only the recipient ids seen are
kept in memory, never the rows.
"""

from __future__ import annotations

import os
from typing import Any, Generic, Iterator, Protocol, TypeVar

from ..domain.errors import InvalidInput
from ..domain.recipients import validate_recipient
from ..storage.codec import FrameReader, StopReason, encode_records

__all__ = ["MAX_REPORTED_ERRORS", "Row", "RowsSink", "RowsWriter", "Upload", "iter_rows", "rows_path"]

MAX_REPORTED_ERRORS = 1000
_CHUNK = 2000
Row = tuple[str, "dict[str, Any] | None", "bytes | None"]
Ref = TypeVar("Ref", covariant=True)


class RowsSink(Protocol[Ref]):
    """Where an upload's accepted rows go: one rows file (`RowsWriter`), or one per partition of a
    cluster (cluster/campaign_rows.py). `commit` makes them durable and names them."""

    @property
    def count(self) -> int: ...

    def add(self, row: Row) -> None: ...

    def commit(self) -> Ref: ...

    def abort(self) -> None: ...


def rows_path(directory: str, campaign_id: str) -> str:
    return os.path.join(directory, f"{campaign_id}.rows")


class RowsWriter:
    """Frames rows in chunks into a temporary file; `commit` makes it durable."""

    def __init__(self, directory: str | None, campaign_id: str) -> None:
        self.count = 0
        self._pending: list[Row] = []
        self._buf: bytearray | None = None
        self._f: Any = None
        if directory is None:
            self._buf = bytearray()
        else:
            os.makedirs(directory, exist_ok=True)
            self.directory = directory
            self.path = rows_path(directory, campaign_id)
            self._tmp = self.path + ".tmp"
            self._f = open(self._tmp, "wb")

    def add(self, row: Row) -> None:
        self._pending.append(row)
        self.count += 1
        if len(self._pending) >= _CHUNK:
            self._flush()

    def _flush(self) -> None:
        if self._pending:
            data = encode_records(self._pending)
            self._pending.clear()
            if self._buf is not None:
                self._buf += data
            else:
                self._f.write(data)

    def commit(self) -> str | bytes:
        """The rows' reference for the campaign record: a file name, or the frames."""
        self._flush()
        if self._buf is not None:
            return bytes(self._buf)
        f, self._f = self._f, None
        try:
            f.flush()
            os.fsync(f.fileno())
        finally:
            f.close()
        os.replace(self._tmp, self.path)
        fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(fd)  # the rename itself must survive a crash
        finally:
            os.close(fd)
        return os.path.basename(self.path)

    def abort(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None
            try:
                os.unlink(self._tmp)
            except FileNotFoundError:
                pass


def iter_rows(ref: str | bytes, directory: str | None) -> Iterator[Row]:
    """The rows in order; raises OSError if the file is gone, ValueError if damaged."""
    if isinstance(ref, bytes):
        reader = FrameReader(ref)
        yield from reader
        if reader.stop is not StopReason.END:
            raise ValueError(f"inline campaign rows are damaged: {reader.detail}")
        return
    path = os.path.join(directory or ".", ref)
    with open(path, "rb") as f:
        reader = FrameReader(f)
        yield from reader
        if reader.stop is not StopReason.END:
            raise ValueError(f"{path} is damaged: {reader.detail}")


class Upload(Generic[Ref]):
    """One campaign's rows on their way in: validated, deduplicated, written to `writer`."""

    def __init__(self, campaign_id: str, writer: RowsSink[Ref]) -> None:
        self.id = campaign_id
        self.writer = writer
        self.errors: list[dict[str, Any]] = []
        self.rejected = 0
        self._seen: set[str] = set()

    @property
    def accepted(self) -> int:
        return self.writer.count

    def reject(self, row: int, message: str) -> None:
        self.rejected += 1
        if len(self.errors) < MAX_REPORTED_ERRORS:
            self.errors.append({"row": row, "message": message})

    def add(self, row: int, rid: Any, fields: dict[str, Any] | None, data: bytes | None) -> None:
        """Row `row` (1-based, as reported): recipient `rid` with address fields to upsert."""
        if not isinstance(rid, str) or not rid.strip():
            self.reject(row, "no recipient: the recipient id is empty")
            return
        problems = validate_recipient(rid, fields or {})
        if problems:
            self.reject(row, problems[0][1])
            return
        if rid in self._seen:
            self.reject(row, f"duplicate recipient {rid!r}: an earlier row has it, and the first row wins")
            return
        self._seen.add(rid)
        self.writer.add((rid, fields or None, data))

    def finish(self) -> Ref:
        """Commit the rows (durably); 422 when not one row was accepted."""
        self._seen = set()
        if self.writer.count == 0:
            self.writer.abort()
            details = [(f"row {e['row']}", e["message"]) for e in self.errors[:20]]
            raise InvalidInput("the campaign has no valid recipients"
                               + (f" ({self.rejected} rows were rejected)" if self.rejected else ""), details)
        return self.writer.commit()

    def abort(self) -> None:
        self.writer.abort()
