"""Framing of msgpack records and the snapshot header/trailer; no file I/O.

A frame is `<u32 LE payload length><u32 LE crc32(payload)><msgpack payload>`.
Invariants: the encoder never emits an empty payload or one over
`MAX_FRAME_BYTES`, so a zero or huge length can only mean damage (a
zero-filled tail after a crash reads as length 0 with crc 0, which is why a
zero length is never a valid frame). Decoding yields arrays as tuples (what
the engine appends is what replay gives back, and arrays work as map keys).

A snapshot is a header frame, the body frames, then a trailer frame whose
`checksum` is the crc32 of the body frames' bytes and `records` their count.
"""

from __future__ import annotations

import enum
import struct
import threading
import zlib
from collections.abc import Iterable, Iterator
from typing import IO, Any

import msgpack

__all__ = [
    "Packed",
    "pack",
    "CHUNK_BYTES",
    "FORMAT",
    "FRAME_HEADER",
    "MAX_FRAME_BYTES",
    "VERSION",
    "CorruptSnapshot",
    "FrameReader",
    "SnapshotEncoder",
    "SnapshotError",
    "StopReason",
    "UnsupportedFormat",
    "check_header",
    "check_trailer",
    "encode_record",
    "encode_records",
    "iter_frames",
    "make_header",
]

FORMAT = "cascade-snapshot"
VERSION = 3  # 2: front records are domain/records.py types; 3: recipients carry webPush and timezone
MAX_FRAME_BYTES = 64 << 20
CHUNK_BYTES = 1 << 20
FRAME_HEADER = _HEAD = struct.Struct("<II")  # payload length, crc32(payload)
_crc32 = zlib.crc32
_unpackb = msgpack.unpackb
_local = threading.local()  # Packer buffers are not safe to share across threads


class SnapshotError(Exception):
    """Base of the snapshot/journal format errors."""


class CorruptSnapshot(SnapshotError):
    def __init__(self, path: str, offset: int, reason: str) -> None:
        super().__init__(f"{path}: corrupt at byte {offset}: {reason}")
        self.path, self.offset, self.reason = path, offset, reason


class UnsupportedFormat(SnapshotError):
    def __init__(self, found_format: object, found_version: object) -> None:
        super().__init__(
            f"unsupported snapshot format {found_format!r} version {found_version!r}; "
            f"this cascade reads {FORMAT!r} version {VERSION}"
        )
        self.found_format, self.found_version = found_format, found_version


class StopReason(str, enum.Enum):
    END = "end"  # clean end of data
    TORN = "torn"  # the last frame is incomplete
    CORRUPT = "corrupt"  # checksum mismatch, or a payload msgpack cannot decode
    BAD_LENGTH = "bad-length"  # zero or absurd length field


def _packer() -> msgpack.Packer:
    packer: msgpack.Packer | None = getattr(_local, "packer", None)
    if packer is None:
        packer = _local.packer = msgpack.Packer(use_bin_type=True)
    return packer


def encode_record(obj: Any) -> bytes:
    payload: bytes = _packer().pack(obj)
    if len(payload) > MAX_FRAME_BYTES:
        raise ValueError(f"a record exceeds the {MAX_FRAME_BYTES}-byte frame limit")
    return _HEAD.pack(len(payload), _crc32(payload)) + payload


class Packed:
    """A record already packed with msgpack (by whoever owned the data when
    it was consistent); framed as is."""

    __slots__ = ("payload",)

    def __init__(self, payload: bytes) -> None:
        self.payload = payload


def pack(obj: Any) -> Packed:
    return Packed(_packer().pack(obj))


def encode_records(records: Iterable[Any]) -> bytes:
    """Frames for all `records`, concatenated; one Packer, one join."""
    pack, head, crc = _packer().pack, _HEAD.pack, _crc32

    def frame(obj: Any) -> bytes:
        payload: bytes = obj.payload if type(obj) is Packed else pack(obj)
        return head(len(payload), crc(payload)) + payload

    frames = [frame(obj) for obj in records]
    data = b"".join(frames)
    # Only a batch over the limit can hold an oversized record: the check is free otherwise.
    if len(data) > MAX_FRAME_BYTES and max(map(len, frames)) > MAX_FRAME_BYTES + 8:
        raise ValueError(f"a record exceeds the {MAX_FRAME_BYTES}-byte frame limit")
    return data


class FrameReader:
    """Iterate the records of framed data, then say where and why it stopped.

    `source` is a bytes-like buffer or a binary file read in ~1 MiB chunks
    from its current position (`offset` is that position, for reporting;
    `limit` caps the bytes read). After iteration is exhausted: `stop`,
    `detail`, `end` (offset just past the last valid frame), `records`,
    `last_start` (offset of the last valid frame, -1 if none), `checksum`
    (crc32 of the valid frames' bytes except the last one). With
    `decode=False` frames are only checked and None is yielded.
    """

    def __init__(
        self,
        source: bytes | bytearray | memoryview | IO[bytes],
        *,
        offset: int = 0,
        limit: int | None = None,
        decode: bool = True,
        max_frame: int = MAX_FRAME_BYTES,
    ) -> None:
        self._source, self._limit, self._decode, self._max = source, limit, decode, max_frame
        self.end, self.records, self.last_start, self.checksum = offset, 0, -1, 0
        self.stop: StopReason | None = None
        self.detail = ""

    def __iter__(self) -> Iterator[Any]:
        return self._frames()

    def _frames(self) -> Iterator[Any]:
        src, limit, decode, max_frame = self._source, self._limit, self._decode, self._max
        unpack_from, crc32, unpackb = _HEAD.unpack_from, _crc32, _unpackb
        in_memory = isinstance(src, (bytes, bytearray, memoryview))
        base, carry, need, crc, last, count = self.end, b"", 0, 0, b"", 0
        while True:
            if in_memory:
                buf: Any = memoryview(src)[:limit] if limit is not None else src  # type: ignore[arg-type]
                eof = True
            else:
                size = max(CHUNK_BYTES, need) if limit is None else min(max(CHUNK_BYTES, need), limit)
                data = src.read(size) if size > 0 else b""  # type: ignore[union-attr]
                if limit is not None:
                    limit -= len(data)
                eof = not data or limit == 0
                buf = carry + data if carry else data
            mv, size, pos, frame_start, stop, detail, need = memoryview(buf), len(buf), 0, -1, None, "", 8
            while pos + 8 <= size:
                length, check = unpack_from(buf, pos)
                if length == 0 or length > max_frame:
                    stop, detail = StopReason.BAD_LENGTH, f"frame length {length} at byte {base + pos}"
                    break
                stop_at = pos + 8 + length
                if stop_at > size:
                    need = stop_at - pos
                    break
                payload = mv[pos + 8 : stop_at]
                if crc32(payload) != check:
                    stop, detail = StopReason.CORRUPT, f"checksum mismatch in frame at byte {base + pos}"
                    break
                record = None
                if decode:
                    try:
                        record = unpackb(payload, use_list=False, strict_map_key=False)
                    except Exception as exc:  # crc matched: written that way
                        stop, detail = StopReason.CORRUPT, f"undecodable frame at byte {base + pos}: {exc}"
                        break
                frame_start, pos, count = pos, stop_at, count + 1
                yield record
            if frame_start >= 0:  # fold this buffer's frames into the running crc, keeping the last apart
                crc = crc32(mv[:frame_start], crc32(last, crc))
                last = bytes(mv[frame_start:pos])
                self.last_start = base + frame_start
            self.end, self.records = base + pos, count
            if stop is None and eof:
                stop = StopReason.END if pos == size else StopReason.TORN
                if stop is StopReason.TORN:
                    detail = f"incomplete frame at byte {base + pos}: {size - pos} bytes of data"
            if stop is not None:
                self.stop, self.detail, self.checksum = stop, detail, crc
                return
            carry, base = bytes(mv[pos:]), base + pos


def iter_frames(
    source: bytes | bytearray | memoryview | IO[bytes], *, offset: int = 0, decode: bool = True
) -> FrameReader:
    """A `FrameReader` over `source`: iterate it, then read its `stop`/`end`."""
    return FrameReader(source, offset=offset, decode=decode)


def make_header(
    shard: int, journal_position: int, counts: dict[str, int], created_at: float, **extra: Any
) -> dict[str, Any]:
    header = dict(extra)
    header.update(
        format=FORMAT, version=VERSION, shard=shard, journal_position=journal_position,
        counts=dict(counts), created_at=created_at,
    )
    return header


def check_header(obj: Any, path: str = "<snapshot>") -> dict[str, Any]:
    """The header if `obj` is one this code reads; UnsupportedFormat names what it found."""
    if not isinstance(obj, dict) or "format" not in obj:
        raise CorruptSnapshot(path, 0, "first record is not a snapshot header")
    if obj["format"] != FORMAT or obj.get("version") != VERSION:
        raise UnsupportedFormat(obj["format"], obj.get("version"))
    for key, kind in (("shard", int), ("journal_position", int), ("counts", dict), ("created_at", (int, float))):
        if not isinstance(obj.get(key), kind):
            raise CorruptSnapshot(path, 0, f"header field {key!r} is missing or invalid")
    return obj


def check_trailer(obj: Any, records: int, checksum: int, path: str, offset: int) -> None:
    if not (isinstance(obj, dict) and obj.get("trailer") is True):
        raise CorruptSnapshot(path, offset, "trailer missing: the snapshot was cut short")
    if obj.get("records") != records:
        raise CorruptSnapshot(path, offset, f"trailer says {obj.get('records')} records, found {records}")
    if obj.get("checksum") != checksum:
        raise CorruptSnapshot(path, offset, f"body checksum {checksum:#010x} != trailer {obj.get('checksum')!r}")


class SnapshotEncoder:
    """Incremental snapshot encoding: `begin()`, `encode(batch)`..., `end()`."""

    def __init__(self, header: dict[str, Any]) -> None:
        self.header = check_header(header)
        self.records = 0
        self.checksum = 0

    def begin(self) -> bytes:
        return encode_record(self.header)

    def encode(self, batch: list[Any]) -> bytes:
        data = encode_records(batch)
        self.records += len(batch)
        self.checksum = _crc32(data, self.checksum)
        return data

    def end(self) -> bytes:
        return encode_record({"trailer": True, "records": self.records, "checksum": self.checksum})
