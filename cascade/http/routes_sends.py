"""Transactional sends: start (with idempotency keys), read, cancel.

A new send answers 202; a repeated `idempotencyKey` with the same body
answers 200 with the same send, and with another body 409 (the engine keeps
the keys and compares a digest of template, recipient and data). Free-form
`data` is checked here for what the journal cannot store (too deep, integers
beyond 64 bits), so no client value reaches the engine and fails there.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from ..config import Settings
from ..engine import Engine
from .arrival import ARRIVAL
from .auth import READ, WRITE
from .errors import json_response
from .openapi import Route, SendView
from .routes_recipients import recipient_fields
from .schemas import SendBody, check_json, decode, decoder_for, read_body

__all__ = ["routes"]


def routes(engine: Engine, settings: Settings) -> list[Route]:
    max_bytes = settings.server.max_body_bytes
    decoder = decoder_for(SendBody)

    async def create_send(request: web.Request) -> web.Response:
        body = decode(decoder, await read_body(request, max_bytes))
        if body.data:
            check_json(((body.data, "$.data"),))
        recipient: str | dict[str, Any]
        if isinstance(body.recipient, str):
            recipient = body.recipient
        else:
            recipient = {"id": body.recipient.id, **recipient_fields(body.recipient)}
        reply, created = engine.send(body.template, recipient, body.data, body.idempotencyKey)
        return json_response(await reply, 202 if created else 200)

    async def get_send(request: web.Request) -> web.Response:
        return json_response(await engine.get_send(request.match_info["id"]))

    async def cancel_send(request: web.Request) -> web.Response:
        return json_response(await engine.cancel_send(request.match_info["id"], request.get(ARRIVAL)))

    path = "/v1/sends/{id}"
    return [
        Route("POST", "/v1/sends", create_send, WRITE,
              "Start a send (202); a repeated idempotencyKey answers 200 with the same send, or 409 "
              "for another body", body=SendBody, response=SendView, ok=202, errors=(404, 409, 503),
              also_ok=((200, "The send an earlier request with this idempotencyKey and the same body made"),),
              sheddable=True),
        Route("GET", path, get_send, READ, "A send and its steps", response=SendView, errors=(404,)),
        Route("DELETE", path, cancel_send, WRITE, "Cancel a send (409 if it has already finished)",
              response=SendView, errors=(404, 409), signals=True),
    ]
