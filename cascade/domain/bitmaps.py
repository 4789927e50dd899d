"""Growable bitmaps of row numbers: which rows of a campaign have started
(a shard keeps one per campaign; the fan-out skips the rows set in it)."""

from __future__ import annotations

__all__ = ["bit_is_set", "set_bit"]


def set_bit(bits: bytearray, i: int) -> None:
    byte = i >> 3
    if byte >= len(bits):
        bits.extend(bytes(byte + 1 - len(bits) + (len(bits) >> 2)))  # grow geometrically
    bits[byte] |= 1 << (i & 7)


def bit_is_set(bits: bytes | bytearray, i: int) -> bool:
    byte = i >> 3
    return byte < len(bits) and bool(bits[byte] & (1 << (i & 7)))
