"""The stats series' file in the data dir: read at start, replaced atomically.

Owns `series.msgpack` (series.py's bytes): written under a temporary name,
fsynced, renamed over the old file and the directory fsynced, so a crash
leaves the old file or the new one, never half of one.
"""

from __future__ import annotations

import os

__all__ = ["FILE_NAME", "read_series", "write_series"]

FILE_NAME = "series.msgpack"


def read_series(directory: str) -> bytes | None:
    """The saved bytes, or None when there is no file yet."""
    try:
        with open(os.path.join(directory, FILE_NAME), "rb") as f:
            return f.read()
    except FileNotFoundError:
        return None


def write_series(directory: str, data: bytes) -> None:
    path = os.path.join(directory, FILE_NAME)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
