"""The built-in in-app inbox: list (newest first, with a cursor) and mark
viewed/clicked. Open to API keys and to the recipient's own
`X-Recipient-Token` (see auth.py). Listing a message marks it delivered: the
engine does that as it builds the page. The stream of the same inbox
(Server-Sent Events) is `inbox_stream.py`'s; it is listed here with the rest.
"""

from __future__ import annotations

from aiohttp import web

from ..config import Settings
from ..engine import Engine
from .arrival import ARRIVAL
from .auth import READ, WRITE
from .errors import json_response
from .inbox_stream import InboxStreams
from .openapi import InboxPage, Route
from .schemas import query_limit

__all__ = ["MAX_LIMIT", "routes"]

MAX_LIMIT = 200


def routes(engine: Engine, settings: Settings, streams: InboxStreams | None = None) -> list[Route]:
    async def list_inbox(request: web.Request) -> web.Response:
        query = request.query
        page = await engine.inbox(request.match_info["id"], query_limit(query.get("limit"), MAX_LIMIT), query.get("before") or None,
                                  request.get(ARRIVAL))
        return json_response(page)

    def marker(kind: str) -> Route:
        async def handler(request: web.Request) -> web.Response:
            await engine.inbox_signal(request.match_info["id"], request.match_info["messageId"], kind,
                                      request.get(ARRIVAL))
            return web.Response(status=204)

        return Route("POST", f"/v1/recipients/{{id}}/inbox/{{messageId}}/{kind}", handler, WRITE,
                     f"Mark an inbox message {kind}", ok=204, errors=(404,), recipient_token=True, signals=True)

    return [
        Route("GET", "/v1/recipients/{id}/inbox", list_inbox, READ,
              "A recipient's in-app messages, newest first; listing marks them delivered",
              response=InboxPage, errors=(422,), recipient_token=True, signals=True,
              query=(("limit", "page size", {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT, "default": 50}),
                     ("before", "the `next` cursor of the previous page", {"type": "string"}))),
        marker("viewed"),
        marker("clicked"),
        *([streams.route()] if streams is not None else []),
    ]
