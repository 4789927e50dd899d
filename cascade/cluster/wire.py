"""Frames between nodes: a forwarded call and its answer, in msgpack.

A call is `[op, partition, args]`; `partition` is -1 for calls a node
answers over all the partitions it owns (`partitions` in args then). An
answer is `[OK, value]`, `[ERROR, code, message, details, retry_after]`
(a `CascadeError`, raised again on the caller's side as the same class, so a
forwarded 404 or 409 reads exactly like a local one) or `[NOT_OWNER,
message]` (ownership moved while the call travelled: the caller looks the
owner up again). Arrays come back as tuples (`use_list=False`), so totals'
tuple keys survive the trip.
"""

from __future__ import annotations

from typing import Any

import msgpack

from ..domain.errors import (
    AlreadyFinished,
    CascadeError,
    Conflict,
    InvalidInput,
    NotFound,
    Overloaded,
    TemplateInvalid,
)

__all__ = ["ERROR", "NOT_OWNER", "OK", "NotOwner", "decode", "encode", "error_frame", "raise_error"]

OK, ERROR, NOT_OWNER = 0, 1, 2
_CLASSES: dict[str, type[CascadeError]] = {
    cls.code: cls for cls in (InvalidInput, TemplateInvalid, NotFound, Conflict, AlreadyFinished, Overloaded)
}


class NotOwner(Exception):
    """This node does not own the partition a call was for (any more)."""


def encode(value: Any) -> bytes:
    data: bytes = msgpack.packb(value, use_bin_type=True)
    return data


def decode(data: bytes) -> Any:
    return msgpack.unpackb(data, use_list=False, strict_map_key=False, raw=False)


def error_frame(exc: BaseException) -> list[Any]:
    if isinstance(exc, NotOwner):
        return [NOT_OWNER, str(exc)]
    if isinstance(exc, CascadeError):
        return [ERROR, exc.code, exc.message, [list(d) for d in exc.details], getattr(exc, "retry_after_s", 1)]
    return [ERROR, "internal", f"the owner failed: {type(exc).__name__}: {exc}", [], 1]


def raise_error(frame: tuple[Any, ...]) -> None:
    """Raise what an ERROR or NOT_OWNER answer carries."""
    if frame[0] == NOT_OWNER:
        raise NotOwner(frame[1])
    _, code, message, details, retry_after = frame
    cls = _CLASSES.get(code)
    if cls is Overloaded:
        raise Overloaded(message, int(retry_after))
    if cls is None:
        raise RuntimeError(message)
    raise cls(message, [tuple(d) for d in details])
