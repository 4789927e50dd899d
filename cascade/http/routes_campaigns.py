"""Campaigns: create (JSON or a streamed CSV), read, list, cancel.

`POST /v1/campaigns` takes `application/json` (`CampaignBody`, bounded by
`server.max_body_bytes`) or `text/csv` with `?template=&scheduledAt=&name=`
(bounded by `server.max_csv_bytes`, parsed as a stream in a worker thread
that pulls the body from the event loop a chunk at a time: see
csv_rows.py). Either way the rows go to the campaign's rows file, made
durable before the campaign record, which is journaled before the 201.
The answer lists the rejected rows (at most 1,000; `rejectedRows` counts
them all). Unknown template: 404 before the body is read.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from aiohttp import web

from ..campaigns.book import STATUSES, Campaign
from ..campaigns.desk import CampaignDesk
from ..campaigns.rows import Upload
from ..config import Settings
from ..domain.timefmt import iso, parse_iso
from ..engine import Engine
from ..engine.supervisor import pack_data
from .auth import READ, WRITE
from .csv_rows import read_csv
from .errors import ApiError, json_response
from .openapi import CampaignCreated, CampaignList, CampaignView, Route
from .routes_recipients import recipient_fields
from .schemas import CampaignBody, check_json, decode, decoder_for, read_body

__all__ = ["routes"]

_PULL_BYTES = 1 << 18
_NEVER = threading.Event()
_PULL_TIMEOUT_S = 300.0  # a client that stops sending mid-upload does not hold a thread forever
_CSV_QUERY = (
    ("template", "text/csv only: the template id", {"type": "string"}),
    ("scheduledAt", "text/csv only: RFC 3339 start time (default: now)", {"type": "string", "format": "date-time"}),
    ("name", "text/csv only: a name for people", {"type": "string"}),
)
_CSV_DOC = ("a header row with recipient and optional email, phone, push_token; every other column is data, "
            "a dotted name nesting (order.id -> {\"order\": {\"id\": ...}}); bad rows are reported and skipped")
_LIST_QUERY = (
    ("status", "only campaigns with this status", {"type": "string", "enum": list(STATUSES)}),
    ("limit", "at most this many (1-1000, default 100)", {"type": "integer"}),
    ("before", "the `next` cursor of the previous page", {"type": "string"}),
)


def _created(c: Campaign, upload: Upload[Any]) -> web.Response:
    return json_response({
        "id": c.id, "status": c.status, "name": c.name, "template": c.template, "templateVersion": c.version,
        "scheduledAt": iso(c.scheduled_at), "createdAt": iso(c.created_at), "recipients": c.n_rows,
        "rejectedRows": upload.rejected, "errors": upload.errors,
    }, 201)


def _time(text: str | None, param: str) -> float | None:
    """A query parameter's RFC 3339 time; errors name the parameter bare, as
    every query parameter is named in error details (`$.` is the body)."""
    if text is None or text == "":
        return None
    try:
        return parse_iso(text)
    except ValueError as exc:
        raise ApiError(422, "invalid", f"invalid query parameter {param}: {exc}", [(param, str(exc))]) from None


def routes(engine: Engine, desk: CampaignDesk, settings: Settings) -> list[Route]:
    json_max = settings.server.max_body_bytes
    csv_max = settings.server.max_csv_bytes
    decoder = decoder_for(CampaignBody)

    async def create_campaign(request: web.Request) -> web.Response:
        if request.content_type == "text/csv":
            return await create_from_csv(request)
        if request.content_type == "application/json":
            return await create_from_json(request)
        raise ApiError(415, "unsupported_media_type",
                       f"Content-Type {request.headers.get('Content-Type', '(none)')!r} is not accepted here; "
                       "send application/json or text/csv")

    async def create_from_json(request: web.Request) -> web.Response:
        body = decode(decoder, await read_body(request, json_max))
        engine.get_template(body.template)  # 404 first
        if body.data:
            check_json(((body.data, "$.data"),))
        data = pack_data(body.data)
        upload = desk.new_upload()

        def rows() -> Any:
            try:
                for n, r in enumerate(body.recipients, 1):
                    if isinstance(r, str):
                        upload.add(n, r, None, None)
                    else:
                        upload.add(n, r.id, recipient_fields(r) or None, None)
                return upload.finish()
            except BaseException:
                upload.abort()
                raise

        ref = await asyncio.get_running_loop().run_in_executor(None, rows)
        scheduled = body.scheduledAt.timestamp() if body.scheduledAt is not None else None
        c = await desk.create(upload, ref, body.template, scheduled, body.name, data)
        return _created(c, upload)

    async def create_from_csv(request: web.Request) -> web.Response:
        charset = request.charset
        if charset is not None and charset.lower().replace("_", "-") not in ("utf-8", "utf8"):
            raise ApiError(415, "unsupported_media_type", f"charset {charset!r} is not accepted; send UTF-8")
        query = request.query
        template = query.get("template")
        if not template:
            raise ApiError(422, "invalid", "a CSV campaign names its template: ?template=<id>",
                           [("template", "required: the template id")])
        engine.get_template(template)  # 404 before reading the body
        scheduled = _time(query.get("scheduledAt"), "scheduledAt")
        name = query.get("name") or None
        if name is not None and len(name) > 200:
            raise ApiError(422, "invalid", "name is longer than 200 characters",
                           [("name", "at most 200 characters")])
        length = request.content_length
        if length is not None and length > csv_max:
            raise ApiError(413, "payload_too_large", f"the CSV is {length} bytes; the limit is {csv_max} "
                           "(server.max_csv_bytes)")
        loop = asyncio.get_running_loop()
        content = request.content
        upload = desk.new_upload()
        background = desk.background

        def pull() -> bytes:
            return asyncio.run_coroutine_threadsafe(content.read(_PULL_BYTES), loop).result(_PULL_TIMEOUT_S)

        def pause() -> None:  # parsing is background work: requests other than this one come first
            background.pause(_NEVER, own_requests=1)

        def rows() -> Any:
            try:
                with background.running():
                    read_csv(pull, csv_max, upload, pause)
                return upload.finish()
            except BaseException:
                upload.abort()
                raise

        ref = await loop.run_in_executor(None, rows)
        c = await desk.create(upload, ref, template, scheduled, name, None)
        return _created(c, upload)

    async def get_campaign(request: web.Request) -> web.Response:
        return json_response(await desk.view(request.match_info["id"]))

    async def list_campaigns(request: web.Request) -> web.Response:
        query = request.query
        status = query.get("status")
        if status is not None and status not in STATUSES:
            raise ApiError(422, "invalid", f"status {status!r} is not one of {', '.join(STATUSES)}",
                           [("status", f"one of {', '.join(STATUSES)}")])
        try:
            limit = int(query.get("limit", "100"))
        except ValueError:
            limit = 0
        if not 1 <= limit <= 1000:
            raise ApiError(422, "invalid", "limit must be an integer from 1 to 1000",
                           [("limit", "an integer from 1 to 1000")])
        return json_response(await desk.page(status, limit, query.get("before") or None))

    async def cancel_campaign(request: web.Request) -> web.Response:
        return json_response(await desk.cancel(request.match_info["id"]))

    path = "/v1/campaigns/{id}"
    return [
        Route("POST", "/v1/campaigns", create_campaign, WRITE,
              "Create a campaign from JSON or a streamed CSV (201); bad rows are reported and skipped",
              body=CampaignBody, raw_body=(("text/csv", _CSV_DOC),), query=_CSV_QUERY, response=CampaignCreated,
              ok=201, errors=(404, 503)),
        Route("GET", "/v1/campaigns", list_campaigns, READ, "Campaigns, newest first", response=CampaignList,
              query=_LIST_QUERY, errors=(422,)),
        Route("GET", path, get_campaign, READ, "A campaign: status, counts and the per-step metrics of its sends",
              response=CampaignView, errors=(404,)),
        Route("DELETE", path, cancel_campaign, WRITE,
              "Cancel a campaign: nothing more starts and its active sends are cancelled (409 if already "
              "cancelled)", response=CampaignView, errors=(404, 409)),
    ]
