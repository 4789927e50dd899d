"""Engagement ingestion: one event, `{"events": [...]}`, or NDJSON lines.

Owns the per-item contract: an item that fails validation (wrong types, a
bad `at`, neither `messageId` nor `sendId` + `channel`, unknown fields)
becomes an `invalid` entry in `errors` with its index and never fails the
rest; only a body that is not JSON, or not one of the two shapes, fails the
request (400), and more than 10,000 items is 413. The common case is decoded
in one msgspec call; per-item decoding happens only once that call has
found a bad item. Indices count items (for NDJSON: non-blank lines).
"""

from __future__ import annotations

from typing import Any

import msgspec
from aiohttp import web

from ..config import Settings
from ..engine import Engine, Event
from .arrival import ARRIVAL
from .auth import EVENTS
from .errors import ApiError, json_response
from .openapi import EventsResult, Route
from .schemas import MAX_EVENTS, EventBatch, EventBody, decoder_for, not_json, parse_any, read_body, validation_error

__all__ = ["routes"]

_NDJSON = frozenset({"application/x-ndjson", "application/ndjson"})
_TYPES = frozenset({"application/json"}) | _NDJSON
_MAX_AT = 253402300799.0  # 9999-12-31T23:59:59Z, the last time RFC 3339 can write
_NO_MESSAGE = "an event names its message by messageId, or by sendId and channel"
_SHAPE = 'the body must be one event object or {"events": [...]}'

_one = decoder_for(EventBody)
_batch = decoder_for(EventBatch)

# An item is either a decoded EventBody or the message saying why it is invalid.
Item = EventBody | str


def _event(e: EventBody) -> Event | str:
    """The engine's event tuple, or why the item is invalid. Called once per
    event on the ingestion hot path: keep it flat."""
    if e.messageId is None and (e.sendId is None or e.channel is None):
        return _NO_MESSAGE
    at = e.at
    if at is None:
        return (e.messageId, e.sendId, e.channel, e.type, None)
    try:
        ts = at.timestamp()
    except (OverflowError, ValueError):
        ts = -1.0
    if not 0.0 <= ts <= _MAX_AT:
        return f"at {at.isoformat()} is outside 1970-01-01 to 9999-12-31"
    return (e.messageId, e.sendId, e.channel, e.type, ts)


def _item(value: Any) -> Item:
    try:
        return msgspec.convert(value, EventBody)
    except msgspec.ValidationError as exc:
        return validation_error(exc).details[0][1] + _at(exc)


def _at(exc: msgspec.ValidationError) -> str:
    _, sep, path = str(exc).rpartition(" - at `")
    return f" (at {path[:-1]})" if sep else ""


def _line(line: bytes) -> Item:
    try:
        return _one.decode(line)
    except msgspec.ValidationError as exc:
        return validation_error(exc).details[0][1] + _at(exc)
    except Exception as exc:  # not JSON: this line alone is invalid
        return f"the line is not valid JSON: {exc}"


def _too_many(n: int) -> ApiError:
    return ApiError(413, "too_many_events", f"{n} events in one request; the limit is {MAX_EVENTS}")


def _from_json(raw: bytes) -> list[Item]:
    try:
        return [_one.decode(raw)]
    except msgspec.ValidationError:
        pass
    except Exception as exc:
        raise not_json(raw, exc) from None
    try:
        return list(_batch.decode(raw).events)
    except msgspec.ValidationError:
        pass
    except Exception as exc:
        raise not_json(raw, exc) from None
    value = parse_any(raw)  # the slow path: find out which items are bad
    if not isinstance(value, dict):
        raise ApiError(400, "bad_request", _SHAPE, [("$", f"got {type(value).__name__}")])
    if "events" not in value:
        return [_item(value)]
    extra = [k for k in value if k != "events"]
    if extra:
        raise ApiError(422, "invalid", f"unknown field {extra[0]!r} beside events",
                       [(f"$.{k}", "unknown field; allowed: events") for k in extra])
    items = value["events"]
    if not isinstance(items, list):
        raise ApiError(400, "bad_request", _SHAPE, [("$.events", "must be a list of event objects")])
    if len(items) > MAX_EVENTS:
        raise _too_many(len(items))
    return [_item(v) for v in items]


def _from_ndjson(raw: bytes) -> list[Item]:
    lines = [line for line in raw.split(b"\n") if line.strip()]
    if len(lines) > MAX_EVENTS:
        raise _too_many(len(lines))
    return [_line(line) for line in lines]


def routes(engine: Engine, settings: Settings) -> list[Route]:
    max_bytes = settings.server.max_body_bytes

    async def post_events(request: web.Request) -> web.Response:
        raw = await read_body(request, max_bytes, _TYPES)
        items = _from_ndjson(raw) if request.content_type in _NDJSON else _from_json(raw)
        events: list[Event] = []
        origin: list[int] = []  # index in `items` of each entry of `events`
        invalid: list[dict[str, Any]] = []
        for index, item in enumerate(items):
            event = _event(item) if type(item) is EventBody else item
            if type(event) is tuple:
                events.append(event)
                origin.append(index)
            else:
                invalid.append({"index": index, "code": "invalid", "message": event})
        if not events:
            return json_response({"accepted": 0, "duplicates": 0, "errors": invalid})
        result: dict[str, Any] = await engine.signals(events, request.get(ARRIVAL))
        if invalid:  # engine indices count only the valid items: map them back
            for err in result["errors"]:
                err["index"] = origin[err["index"]]
            result["errors"] = sorted(result["errors"] + invalid, key=lambda e: e["index"])
        return json_response(result)

    return [Route("POST", "/v1/events", post_events, EVENTS,
                  "Ingest engagement events: one object, {\"events\": [...]} or NDJSON (at most 10,000); "
                  "a bad item is reported in errors and never fails the rest",
                  body=(EventBody, EventBatch), response=EventsResult, ndjson_item=EventBody, errors=(503,),
                  signals=True, hot=True)]
