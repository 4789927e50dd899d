"""CSV campaign uploads, parsed as a stream into an `Upload`.

The body is pulled a chunk at a time (`BodyStream`), decoded incrementally
(UTF-8, an optional BOM dropped) and split into lines by `io.TextIOWrapper`
with `newline=""`, which is what the csv module needs for quoted fields
holding commas, CRLF or newlines. Nothing here holds more than a chunk of
the body and one row; `Upload` writes rows to the campaign's rows file.

The header names the columns: `recipient` (required), `email`, `phone`,
`push_token` (the recipient's addresses, upserted), and any other name
becomes data, a dotted name nesting (`order.id` -> {"order": {"id": ...}}).
Rows are numbered from 1 after the header, blank lines included, so row n
is line n + 1 of a file without multi-line fields. A blank line (or one of
empty fields only) is skipped silently; a row without a recipient, with the
wrong number of fields, an invalid address, or a recipient seen before is
reported with its number and skipped. Values are strings, as CSV has them.
"""

from __future__ import annotations

import csv
import io
from typing import Any, Callable, Iterable

import msgpack

from ..campaigns.rows import Upload
from .errors import ApiError

__all__ = ["BodyStream", "CsvColumns", "parse_csv", "read_csv"]

_ADDRESSES = {"email": "email", "phone": "phone", "push_token": "pushTokens"}
PAUSE_ROWS = 256  # about a millisecond of parsing


class BodyStream(io.RawIOBase):
    """A readable stream over `pull()` (b"" at the end), refusing more than `limit` bytes."""

    def __init__(self, pull: Callable[[], bytes], limit: int) -> None:
        super().__init__()
        self._pull = pull
        self._limit = limit
        self._chunk = memoryview(b"")
        self.size = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if not self._chunk:
            data = self._pull()
            if not data:
                return 0
            self.size += len(data)
            if self.size > self._limit:
                raise ApiError(413, "payload_too_large", f"the CSV is over the limit of {self._limit} bytes "
                               "(server.max_csv_bytes)")
            self._chunk = memoryview(data)
        n = min(len(buffer), len(self._chunk))
        buffer[:n] = self._chunk[:n]
        self._chunk = self._chunk[n:]
        return n


def _header_error(message: str) -> ApiError:
    return ApiError(422, "invalid", f"the CSV header is invalid: {message}", [("header", message)])


class CsvColumns:
    """What each column of a header means."""

    def __init__(self, header: list[str]) -> None:
        names = [h.strip() for h in header]
        self.width = len(names)
        self.addresses: list[tuple[int, str]] = []
        self.data: list[tuple[int, tuple[str, ...]]] = []
        seen: set[str] = set()
        rid = None
        for i, name in enumerate(names):
            if not name:
                raise _header_error(f"column {i + 1} has no name")
            if name in seen:
                raise _header_error(f"column {name!r} appears twice")
            seen.add(name)
            if name == "recipient":
                rid = i
            elif name in _ADDRESSES:
                self.addresses.append((i, _ADDRESSES[name]))
            else:
                path = tuple(name.split("."))
                if not all(path):
                    raise _header_error(f"column {name!r} has an empty part in its dotted name")
                self.data.append((i, path))
        if rid is None:
            raise _header_error(f"there is no recipient column (found: {', '.join(names)}); "
                                "name one column 'recipient'")
        self.recipient = rid
        paths = {path for _, path in self.data}
        for path in paths:
            for k in range(1, len(path)):
                if path[:k] in paths:
                    raise _header_error(f"column {'.'.join(path)!r} would nest inside column "
                                        f"{'.'.join(path[:k])!r}, which holds a value")
        self.flat = all(len(path) == 1 for _, path in self.data)

    def data_of(self, cells: list[str]) -> dict[str, Any]:
        if self.flat:
            return {path[0]: cells[i] for i, path in self.data}
        out: dict[str, Any] = {}
        for i, path in self.data:
            node = out
            for part in path[:-1]:
                node = node.setdefault(part, {})
            node[path[-1]] = cells[i]
        return out


def parse_csv(lines: Iterable[str], upload: Upload[Any], pause: Callable[[], None] | None = None) -> None:
    """Rows of the CSV `lines` into `upload` (header problems: ApiError 400/422).
    `pause` is called every PAUSE_ROWS rows: the upload yields to requests there."""
    reader = csv.reader(lines)
    header = None
    try:
        for cells in reader:
            if any(c.strip() for c in cells):
                header = cells
                break
    except csv.Error as exc:
        raise ApiError(400, "bad_request", f"the CSV header cannot be read: {exc}") from None
    if header is None:
        raise ApiError(422, "invalid", "the CSV is empty: it needs a header row with a recipient column",
                       [("header", "missing")])
    cols = CsvColumns(header)
    width, rid_at, addresses, has_data = cols.width, cols.recipient, cols.addresses, bool(cols.data)
    packb = msgpack.packb
    number = 0
    while True:
        try:
            cells = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:  # the reader carries on with the next line
            number += 1
            upload.reject(number, f"the row cannot be read: {exc}")
            continue
        number += 1
        if pause is not None and not number % PAUSE_ROWS:
            pause()
        if len(cells) != width:
            if any(c.strip() for c in cells):
                upload.reject(number, f"the row has {len(cells)} fields; the header has {width}")
            continue
        rid = cells[rid_at].strip()
        if not rid:
            if any(c.strip() for c in cells):
                upload.reject(number, "no recipient: the recipient field is empty")
            continue
        fields = None
        for i, key in addresses:
            value = cells[i].strip()
            if value:
                if fields is None:
                    fields = {}
                fields[key] = [value] if key == "pushTokens" else value
        data = packb(cols.data_of(cells)) if has_data else None
        upload.add(number, rid, fields, data)


def read_csv(pull: Callable[[], bytes], limit: int, upload: Upload[Any], pause: Callable[[], None] | None = None) -> None:
    """Parse the body that `pull` yields (blocking: run it in a worker thread)."""
    text = io.TextIOWrapper(io.BufferedReader(BodyStream(pull, limit), 1 << 16), encoding="utf-8-sig", newline="")
    try:
        parse_csv(text, upload, pause)
    except UnicodeDecodeError as exc:
        raise ApiError(400, "bad_request", f"the CSV is not UTF-8 text: {exc.reason} in a chunk of the body "
                       f"(byte {exc.start} of it)") from None
