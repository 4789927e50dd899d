"""Recipients: PUT replaces every field (absent or null clears it), GET reads.

The engine validates ids, addresses, Web Push subscriptions and time zones
(and names the JSON path); this module only drops nulls so that "absent"
and "null" mean the same thing.
"""

from __future__ import annotations

from typing import Any

import msgspec
from aiohttp import web

from ..config import Settings
from ..engine import Engine
from .auth import READ, WRITE
from .errors import json_response
from .openapi import RecipientView, Route
from .schemas import RecipientBody, decode, decoder_for, read_body

__all__ = ["recipient_fields", "routes"]

_FIELDS = RecipientBody.__struct_fields__


def recipient_fields(body: RecipientBody) -> dict[str, Any]:
    fields = {f: v for f in _FIELDS if (v := getattr(body, f)) is not None}
    if "webPush" in fields:  # Structs to the plain JSON the engine validates and journals
        fields["webPush"] = msgspec.to_builtins(fields["webPush"])
    return fields


def routes(engine: Engine, settings: Settings) -> list[Route]:
    max_bytes = settings.server.max_body_bytes
    decoder = decoder_for(RecipientBody)

    async def put_recipient(request: web.Request) -> web.Response:
        body = decode(decoder, await read_body(request, max_bytes))
        return json_response(await engine.put_recipient(request.match_info["id"], recipient_fields(body)))

    async def get_recipient(request: web.Request) -> web.Response:
        return json_response(await engine.get_recipient(request.match_info["id"]))

    path = "/v1/recipients/{id}"
    return [
        Route("PUT", path, put_recipient, WRITE, "Create or replace a recipient", body=RecipientBody,
              response=RecipientView),
        Route("GET", path, get_recipient, READ, "A recipient", response=RecipientView, errors=(404,)),
    ]
