"""Transactional sends: start (with idempotency keys), read, cancel.

A new send answers 202; a repeated `idempotencyKey` with the same body
answers 200 with the same send, and with another body 409 (the engine keeps
the keys and compares a digest of template, recipient and data). Free-form
`data` is checked here for what the journal cannot store (too deep, integers
beyond 64 bits), so no client value reaches the engine and fails there.

`{"sends": [...]}` (up to 1,000) starts a batch: 200 with each item's answer
by index, the status a single request would have had and its send or its
error; a bad item never fails the rest. The batch is admitted whole or
refused whole (503), and each shard journals its share in one commit.
"""

from __future__ import annotations

from typing import Any

import msgspec
from aiohttp import web

from ..config import Settings
from ..domain.errors import CascadeError
from ..domain.send import SEND_STATUS
from ..engine import Engine
from .arrival import ARRIVAL
from .auth import READ, WRITE
from .errors import ApiError, error_body, json_response
from .openapi import Route, SendBatchResult, SendList, SendView
from .routes_recipients import recipient_fields
from .schemas import (
    MAX_SENDS,
    SendBatch,
    SendBody,
    check_json,
    decode,
    decoder_for,
    parse_any,
    query_limit,
    read_body,
    validation_error,
)

__all__ = ["routes"]


class _RawBatch(msgspec.Struct, forbid_unknown_fields=True):
    """A batch with its items undecoded: each is decoded, and refused, on its own."""

    sends: list[msgspec.Raw]


_batch_decoder = msgspec.json.Decoder(_RawBatch)


def _request(body: SendBody, path: str) -> tuple[str, str | dict[str, Any], dict[str, Any] | None, str | None]:
    """The engine's send request from a validated body (data checked for what the journal can hold)."""
    if body.data:
        check_json(((body.data, f"{path}.data"),))
    recipient: str | dict[str, Any]
    if isinstance(body.recipient, str):
        recipient = body.recipient
    else:
        recipient = {"id": body.recipient.id, **recipient_fields(body.recipient)}
    return body.template, recipient, body.data, body.idempotencyKey


_LIST_PARAMS = frozenset({"recipient", "template", "campaign", "status", "limit", "before"})
MAX_LIST = 200


def _status(exc: CascadeError | ApiError) -> int:
    return exc.status if isinstance(exc, ApiError) else exc.status_hint


def routes(engine: Engine, settings: Settings) -> list[Route]:
    max_bytes = settings.server.max_body_bytes
    decoder = decoder_for(SendBody)

    async def create_send(request: web.Request) -> web.Response:
        raw = await read_body(request, max_bytes)
        try:
            body = decoder.decode(raw)
        except msgspec.ValidationError:
            try:  # a batch? its items stay raw, so one bad item cannot fail the rest
                batch = _batch_decoder.decode(raw)
            except (msgspec.ValidationError, msgspec.DecodeError):
                parsed = parse_any(raw)  # malformed JSON is 400 whatever its shape
                if isinstance(parsed, dict) and "sends" in parsed:
                    raise ApiError(400, "bad_request", 'a batch is {"sends": [...]} and nothing else') from None
                body = decode(decoder, raw)  # the single send's own error
            else:
                return json_response(await create_batch(batch.sends))
        except Exception:
            body = decode(decoder, raw)
        created, view = await engine.start_send(*_request(body, "$"))
        return json_response(view, 202 if created else 200)

    async def create_batch(items: list[msgspec.Raw]) -> dict[str, Any]:
        if len(items) > MAX_SENDS:
            raise ApiError(413, "payload_too_large", f"{len(items)} sends in one batch; the limit is {MAX_SENDS}")
        requests: list[Any] = []
        refused: dict[int, CascadeError | ApiError] = {}
        for index, item in enumerate(items):
            path = f"$.sends[{index}]"
            try:
                requests.append((index, _request(decoder.decode(item), path)))
            except msgspec.ValidationError as exc:
                refused[index] = validation_error(exc, path)
            except (CascadeError, ApiError) as exc:
                refused[index] = exc
        answers = await engine.send_batch([r for _, r in requests]) if requests else []
        by_index: dict[int, Any] = dict(refused)
        for (index, _), answer in zip(requests, answers):
            by_index[index] = answer
        results = []
        counts = {"accepted": 0, "repeated": 0, "failed": 0}
        for index in range(len(items)):
            answer = by_index[index]
            if isinstance(answer, (CascadeError, ApiError)):
                counts["failed"] += 1
                results.append({"index": index, "status": _status(answer),
                                "error": error_body(answer, f"$.sends[{index}]")})
            else:
                created, view = answer
                counts["accepted" if created else "repeated"] += 1
                results.append({"index": index, "status": 202 if created else 200, "send": view})
        return {**counts, "results": results}

    async def list_sends(request: web.Request) -> web.Response:
        q = request.query
        unknown = sorted(set(q) - _LIST_PARAMS)
        if unknown:
            raise ApiError(422, "invalid", f"unknown query parameter {unknown[0]!r}; allowed: {', '.join(sorted(_LIST_PARAMS))}",
                           [(unknown[0], "not a filter of this listing")])
        limit = query_limit(q.get("limit"), MAX_LIST)
        return json_response(await engine.list_sends(q.get("recipient") or None, q.get("template") or None,
                                                     q.get("campaign") or None, q.get("status") or None, limit,
                                                     q.get("before") or None))

    async def get_send(request: web.Request) -> web.Response:
        return json_response(await engine.get_send(request.match_info["id"]))

    async def cancel_send(request: web.Request) -> web.Response:
        return json_response(await engine.cancel_send(request.match_info["id"], request.get(ARRIVAL)))

    path = "/v1/sends/{id}"
    return [
        Route("POST", "/v1/sends", create_send, WRITE,
              "Start a send (202); a repeated idempotencyKey answers 200 with the same send, or 409 "
              "for another body. {\"sends\": [...]} (up to 1,000) answers 200 with each item's answer",
              body=(SendBody, SendBatch), response=SendView, ok=202, errors=(404, 409, 503),
              also_ok=((200, "The send an earlier request with this idempotencyKey and the same body made; "
                             "or, for a batch, each item's answer by index", (SendView, SendBatchResult)),),
              sheddable=True, hot=True),
        Route("GET", "/v1/sends", list_sends, READ,
              "Sends, newest first (retained finished ones too), by every filter given", response=SendList,
              errors=(422, 503), query=(
                  ("recipient", "only this recipient's sends", {"type": "string"}),
                  ("template", "only sends of this template", {"type": "string"}),
                  ("campaign", "only this campaign's sends", {"type": "string"}),
                  ("status", "only sends in this status", {"type": "string", "enum": list(SEND_STATUS)}),
                  ("limit", "page size", {"type": "integer", "minimum": 1, "maximum": MAX_LIST, "default": 50}),
                  ("before", "the `next` cursor of the previous page", {"type": "string"}))),
        Route("GET", path, get_send, READ, "A send and its steps", response=SendView, errors=(404,)),
        Route("DELETE", path, cancel_send, WRITE, "Cancel a send (409 if it has already finished)",
              response=SendView, errors=(404, 409), signals=True),
    ]
