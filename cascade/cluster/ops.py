"""What one partition's engine is asked, by name: the same code whether the
call came from this node's front door or was forwarded by another node.

Each op takes the engine and its arguments as they travel (msgpack: plain
values) and returns a plain value. Per-item errors of a batch travel as
error frames (wire.error_frame) and are raised again by the caller.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import asyncio

from ..campaigns import Campaigns, campaigns_of
from ..campaigns.book import CANCELLED, Campaign
from ..domain.errors import AlreadyFinished, CascadeError, NotFound, Overloaded
from ..engine import Engine
from ..engine.series_sampler import SeriesSampler
from . import wire
from .campaign_parts import part_of

__all__ = ["MULTI", "OPS", "SIGNAL_OPS", "raise_item", "run_multi"]

Op = Callable[[Engine, tuple[Any, ...]], Awaitable[Any]]


async def _send(engine: Engine, args: tuple[Any, ...]) -> Any:
    template, recipient, data, key = args
    return await engine.start_send(template, _plain(recipient), _plain(data), key)


async def _send_batch(engine: Engine, args: tuple[Any, ...]) -> Any:
    (items,) = args
    answers = await engine.send_batch([(t, _plain(r), _plain(d), k) for t, r, d, k in items])
    return [wire.error_frame(a) if isinstance(a, BaseException) else [wire.OK, a] for a in answers]


async def _signals(engine: Engine, args: tuple[Any, ...]) -> Any:
    events, arrival = args
    return await engine.signals([tuple(e) for e in events], arrival)


async def _get_send(engine: Engine, args: tuple[Any, ...]) -> Any:
    return await engine.get_send(args[0])


async def _cancel(engine: Engine, args: tuple[Any, ...]) -> Any:
    return await engine.cancel_send(args[0], args[1])


async def _put_recipient(engine: Engine, args: tuple[Any, ...]) -> Any:
    return await engine.put_recipient(args[0], _plain(args[1]))


async def _get_recipient(engine: Engine, args: tuple[Any, ...]) -> Any:
    return await engine.get_recipient(args[0])


async def _drop_web_push(engine: Engine, args: tuple[Any, ...]) -> Any:
    return await engine.drop_web_push(args[0], tuple(args[1]))


async def _inbox(engine: Engine, args: tuple[Any, ...]) -> Any:
    rid, limit, before, arrival = args
    return await engine.inbox(rid, limit, before, arrival)


async def _inbox_peek(engine: Engine, args: tuple[Any, ...]) -> Any:
    return await engine.inbox_peek(args[0], list(args[1]))


async def _inbox_signal(engine: Engine, args: tuple[Any, ...]) -> Any:
    rid, message_id, kind, arrival = args
    return await engine.inbox_signal(rid, message_id, kind, arrival)


async def _listing(engine: Engine, args: tuple[Any, ...]) -> Any:
    return await engine.listing_parts(Engine.send_query(*args))


async def _totals(engine: Engine, args: tuple[Any, ...]) -> Any:
    (groups,) = args
    return await engine.totals(list(groups) if groups is not None else None)


async def _series(engine: Engine, args: tuple[Any, ...]) -> Any:
    """The partition's stats series (series.py ring bytes), read fresh; None if it keeps none."""
    sampler = next((e for e in engine.extensions if isinstance(e, SeriesSampler)), None)
    if sampler is None:
        return None

    return await asyncio.get_running_loop().run_in_executor(None, sampler.fresh_ring)  # waits for the shards


def _campaigns(engine: Engine) -> Campaigns:
    found = campaigns_of(engine)
    if found is None:
        raise Overloaded("this partition runs no campaigns (it is being opened); retry shortly")
    return found


TEMPLATE_WAIT_S = 2.0


async def _campaign_create(engine: Engine, args: tuple[Any, ...]) -> Any:
    """Journal this partition's part of a campaign (cluster/campaigns.py), once; answer the part."""
    template, version, cid, name, scheduled_at, created_at, rows, n_rows, rejected, data = args
    book = _campaigns(engine).book
    loop = asyncio.get_running_loop()
    deadline = loop.time() + TEMPLATE_WAIT_S
    while engine.templates.version(template, version) is None:  # put on another node a moment ago
        if loop.time() > deadline:
            raise Overloaded(f"template {template!r} version {version} has not reached this node yet; retry")
        await asyncio.sleep(0.02)
    c: Campaign = await book.create_part(Campaign(cid, template, version, name, scheduled_at, created_at, rows,
                                                  n_rows, rejected, data))
    return part_of(c, None)


async def _campaign_cancel(engine: Engine, args: tuple[Any, ...]) -> Any:
    """Cancel this partition's part: [1, part] when cancelled now, [2, part] if it already was, [0] if none."""
    book = _campaigns(engine).book
    try:
        c: Campaign = await book.cancel(args[0])
    except NotFound:
        return [0]
    except AlreadyFinished:
        return [2, part_of(book.get(args[0]), None)]
    assert c.status == CANCELLED
    return [1, part_of(c, None)]


async def _campaign_parts(engine: Engine, args: tuple[Any, ...]) -> Any:
    """The parts here of the campaigns `args[0]` (None: all), each with its group's totals."""
    campaigns = campaigns_of(engine)
    if campaigns is None:
        return []
    wanted = args[0]
    book = campaigns.book
    found = [c for c in book.newest_first() if wanted is None or c.id in wanted]
    totals = await engine.totals([c.group for c in found]) if found else {}
    return [part_of(c, totals.get(c.group)) for c in found]


async def _position(engine: Engine, args: tuple[Any, ...]) -> Any:
    journal = engine.journal
    return journal.position() if journal is not None else 0


OPS: dict[str, Op] = {
    "send": _send, "send_batch": _send_batch, "signals": _signals, "get_send": _get_send, "cancel": _cancel,
    "put_recipient": _put_recipient, "get_recipient": _get_recipient, "drop_web_push": _drop_web_push,
    "inbox": _inbox, "inbox_peek": _inbox_peek, "inbox_signal": _inbox_signal,
    "campaign_create": _campaign_create, "campaign_cancel": _campaign_cancel,
}
SIGNAL_OPS = frozenset({"signals", "cancel", "inbox", "inbox_signal"})  # their last argument is the arrival
MULTI: dict[str, Op] = {"listing": _listing, "totals": _totals, "position": _position, "series": _series,
                        "campaign_parts": _campaign_parts}


async def run_multi(local: Callable[[int], Engine | None], op: str, partitions: tuple[int, ...],
                    args: tuple[Any, ...]) -> tuple[dict[int, Any], list[int]]:
    """`op` on each partition of `partitions` this node serves: (answers by partition, the ones it does not)."""
    answers: dict[int, Any] = {}
    missing: list[int] = []
    for p in partitions:
        engine = local(p)
        if engine is None:
            missing.append(p)
        else:
            answers[p] = await MULTI[op](engine, args)
    return answers, missing


def _plain(value: Any) -> Any:
    """msgpack gives tuples for arrays; request bodies are JSON shapes again (lists)."""
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def raise_item(frame: tuple[Any, ...]) -> Any:
    """A batch item's answer as a value, or its error as the CascadeError it was."""
    if frame[0] == wire.OK:
        return frame[1]
    try:
        wire.raise_error(frame)
    except CascadeError as exc:
        return exc
    raise AssertionError("unreachable")
