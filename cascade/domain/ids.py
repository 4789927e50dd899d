"""Ids that carry their hash slot, like Redis Cluster's 16,384 slots.

A send id embeds the slot of its recipient, so a message id routes to its
shard without a lookup, and a recipient's sends and inbox share a shard.
Internally a send id is a 60-bit int (slot << 46 | random); it prints as
`snd_` + 15 hex digits and a message id as `<sendId>.<step>`.

The random part comes from the OS's CSPRNG, drawn 512 ids at a time: one
`os.urandom` per id was a `getrandom` call that releases the interpreter lock,
so the event loop then waited for a shard or the journal to give it back
(75 µs a send on average, measured under load with cProfile).
"""

from __future__ import annotations

import os
import struct
import zlib

__all__ = [
    "SLOTS",
    "format_message_id",
    "format_send_id",
    "new_send_key",
    "parse_message_id",
    "parse_send_id",
    "slot_of",
    "slot_of_key",
]

SLOTS = 16384
_RANDOM_BITS = 46
_RANDOM_MASK = (1 << _RANDOM_BITS) - 1
_PREFIX = "snd_"
_HEX_DIGITS = 15
_LOWER_HEX = "0123456789abcdef"
_DECIMAL = "0123456789"
_POOL_IDS = 512
_pool: list[int] = []  # random 64-bit draws not used yet; list.pop is atomic, so threads share it
os.register_at_fork(after_in_child=_pool.clear)  # a forked worker must not reuse its parent's draws


def _random_bits() -> int:
    while True:
        try:
            return _pool.pop() & _RANDOM_MASK
        except IndexError:
            _pool.extend(struct.unpack(f"<{_POOL_IDS}Q", os.urandom(8 * _POOL_IDS)))


def slot_of(recipient_id: str) -> int:
    return zlib.crc32(recipient_id.encode()) % SLOTS


def new_send_key(slot: int) -> int:
    return (slot << _RANDOM_BITS) | (_random_bits() or 1)


def slot_of_key(key: int) -> int:
    return key >> _RANDOM_BITS


def format_send_id(key: int) -> str:
    return f"{_PREFIX}{key:015x}"


def format_message_id(key: int, step: int) -> str:
    return f"{_PREFIX}{key:015x}.{step}"


def parse_send_id(text: str) -> int | None:
    """The send key of `text`, or None unless `text` is a send id exactly as
    `format_send_id` prints it (lower-case hex: no other spelling names a send)."""
    if len(text) != len(_PREFIX) + _HEX_DIGITS or not text.startswith(_PREFIX):
        return None
    digits = text[len(_PREFIX):]
    if digits.strip(_LOWER_HEX):  # int() would also take upper case, " +_" and non-ASCII digits
        return None
    return int(digits, 16)


def parse_message_id(text: str) -> tuple[int, int] | None:
    """(send key, step) or None when `text` is not a message id exactly as
    `format_message_id` prints it: the step in ASCII decimal from 1, without
    leading zeros."""
    send_part, dot, step_part = text.partition(".")
    if not dot or not 1 <= len(step_part) <= 2 or step_part[0] == "0" or step_part.strip(_DECIMAL):
        return None
    key = parse_send_id(send_part)
    if key is None:
        return None
    return key, int(step_part)
