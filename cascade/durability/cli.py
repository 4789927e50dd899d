"""`cascade snapshot inspect|verify FILE`: look into snapshot and journal files.

`main(argv)` gets the arguments after `snapshot` and returns the exit code:
0 sound, 1 damaged or unreadable, 2 usage. Journal segments
(`journal-*.log`) are understood too, so a torn tail can be looked at
before the server cuts it off.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from ..storage.codec import FrameReader, SnapshotError, StopReason
from ..storage.files import read_snapshot, verify_snapshot

__all__ = ["main"]

_WIDTH = 160


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="cascade snapshot", description="Inspect or verify snapshot files.")
    commands = parser.add_subparsers(dest="command", required=True)
    inspect = commands.add_parser("inspect", help="print the header, counts and the first records")
    inspect.add_argument("file")
    inspect.add_argument("--records", type=int, default=5, metavar="N", help="records to show (default 5)")
    commands.add_parser("verify", help="check every frame and the trailer checksum").add_argument("file")
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits on --help and on usage errors; we return instead
        return exc.code if isinstance(exc.code, int) else 2
    if os.path.basename(args.file).startswith("journal-"):
        return _journal(args.file, args.command, getattr(args, "records", 5))
    return _inspect(args.file, args.records) if args.command == "inspect" else _verify(args.file)


def _verify(path: str) -> int:
    try:
        info = verify_snapshot(path)
    except (SnapshotError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"ok: {info.records} records, {info.bytes} bytes")
    return 0


def _inspect(path: str, show: int) -> int:
    try:
        header, body = read_snapshot(path)
        size = os.path.getsize(path)
    except (SnapshotError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print("header: " + json.dumps(_jsonable(header), indent=2, sort_keys=True))
    first: list[Any] = []
    count, status, code = 0, "ok (trailer count and checksum match)", 0
    try:
        for record in body:
            if count < show:
                first.append(record)
            count += 1
    except SnapshotError as exc:
        status, code = f"CORRUPT: {exc}", 1
    _summary(count, size, status, first)
    return code


def _journal(path: str, command: str, show: int) -> int:
    try:
        with open(path, "rb") as f:
            reader = FrameReader(f)
            first = [record for i, record in enumerate(reader) if i < show]
    except OSError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    sound = reader.stop is StopReason.END
    status = "ok" if sound else f"{reader.stop.value if reader.stop else '?'} at byte {reader.end}: {reader.detail}"
    if command == "verify":
        print(f"ok: {reader.records} records, {reader.end} bytes" if sound else f"error: {path}: {status}",
              file=sys.stdout if sound else sys.stderr)
    else:
        _summary(reader.records, os.path.getsize(path), status, first, valid_bytes=reader.end)
    return 0 if sound else 1


def _summary(count: int, size: int, status: str, first: list[Any], valid_bytes: int | None = None) -> None:
    print(f"records: {count}")
    print(f"bytes: {size}" + (f" ({valid_bytes} valid)" if valid_bytes is not None and valid_bytes != size else ""))
    print(f"status: {status}")
    print(f"first {len(first)} records:")
    for i, record in enumerate(first):
        text = repr(record)
        print(f"  [{i}] {text if len(text) <= _WIDTH else text[: _WIDTH - 3] + '...'}")


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, bytes):
        return value.hex()
    return value
