"""The operation table and the OpenAPI 3.1 document built from it.

Owns `Route` (one row per operation: method, path, handler, the auth need,
request/response types) and the response view types. Each `routes_*.py`
module returns its rows; `app.py` registers them and `document()` turns the
same rows and the same msgspec Structs that decode requests into the
document, so it cannot drift from what the server accepts. The view Structs
describe the engine's JSON views; tests check real responses against them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

import msgspec
from aiohttp import web

from .schemas import MAX_EVENTS, StepBody, TemplateConfig, WebPushSubscription

__all__ = ["Route", "VIEWS", "document"]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    handler: Handler
    need: str | None  # auth need (auth.READ...), None: public
    summary: str
    body: Any = None  # request body type, or a tuple of them (any one of)
    ok: int = 200
    response: Any = None  # response body type
    also_ok: tuple[tuple[int, str] | tuple[int, str, Any], ...] = ()  # other success answers: (status, when[, body type])
    errors: tuple[int, ...] = ()
    query: tuple[tuple[str, str, dict[str, Any]], ...] = ()  # (name, description, schema)
    ndjson_item: Any = None  # the body may also be application/x-ndjson, one of these a line
    recipient_token: bool = False  # X-Recipient-Token opens it for the recipient in {id}
    raw_response: str | None = None  # a non-JSON response media type
    raw_body: tuple[tuple[str, str], ...] = ()  # other request media types: (type, description)
    signals: bool = False  # may carry an engagement signal: its arrival holds windows open (rule 11)
    sheddable: bool = False  # starts new sends: refused first while the server is behind
    hot: bool = False  # high volume, fixed path: served by the lean door (lean_door.py) when one listens
    # A long-lived response (the inbox stream): outside the in-flight bound and the readiness gate,
    # bounded by its own limit; its handler checks auth itself (a token may come in the query).
    stream: bool = False


class _View(msgspec.Struct, kw_only=True):
    pass


class ErrorDetail(_View, kw_only=True):
    path: str
    message: str


class ErrorInfo(_View, kw_only=True):
    code: str
    message: str
    details: list[ErrorDetail]


class Error(_View, kw_only=True):
    error: ErrorInfo


class TemplateView(_View, kw_only=True):
    id: str
    version: int
    name: str
    channels: list[StepBody]
    config: TemplateConfig
    createdAt: str
    updatedAt: str


class TemplateList(_View, kw_only=True):
    templates: list[TemplateView]


class RecipientView(_View, kw_only=True):
    id: str
    email: str | msgspec.UnsetType = msgspec.UNSET
    phone: str | msgspec.UnsetType = msgspec.UNSET
    pushTokens: list[str] | msgspec.UnsetType = msgspec.UNSET
    webPush: list[WebPushSubscription] | msgspec.UnsetType = msgspec.UNSET
    timezone: str | msgspec.UnsetType = msgspec.UNSET
    preferences: dict[str, bool]


class StoppedBy(_View, kw_only=True):
    step: int
    signal: str


class StepView(_View, kw_only=True):
    step: int
    channel: str
    messageId: str
    status: str
    stopCondition: str | None
    waitMinutes: int | None
    firedAt: str | None
    deadline: str | None
    reason: str | None
    signals: dict[str, str | None]
    deferredUntil: str | msgspec.UnsetType = msgspec.UNSET  # quiet hours (rule 12), while deferred
    score: float | msgspec.UnsetType = msgspec.UNSET  # engagement order (rule 14)


class HistoryEntry(_View, kw_only=True):
    """One thing that happened to a send; `what` is fired, signal, window_ended,
    skipped, deferred, delivery_failed, delivery_retried, stopped, cancelled
    or completed, and `detail` says why (its keys depend on `what`)."""
    at: str
    step: int | None
    what: str
    detail: dict[str, Any] | None


class SendView(_View, kw_only=True):
    id: str
    template: str
    templateVersion: int
    recipient: str
    status: str
    createdAt: str
    finishedAt: str | None
    stoppedBy: StoppedBy | None
    steps: list[StepView]
    history: list[HistoryEntry]
    order: list[str] | msgspec.UnsetType = msgspec.UNSET  # engagement order (rule 14): channels in the send's order
    campaign: str | msgspec.UnsetType = msgspec.UNSET


class ItemError(_View, kw_only=True):
    index: int
    code: str
    message: str


class ItemAnswer(_View, kw_only=True):
    """One item of a batch of sends: its status as a single request would
    have had it, and the send or the error."""
    index: int
    status: int
    send: SendView | None = None
    error: ErrorInfo | None = None


class SendBatchResult(_View, kw_only=True):
    accepted: int  # new sends (202)
    repeated: int  # idempotency keys that named an earlier send (200)
    failed: int  # items refused (their error, by index)
    results: list[ItemAnswer]


class EventsResult(_View, kw_only=True):
    accepted: int
    duplicates: int
    errors: list[ItemError]


class InboxMessage(_View, kw_only=True):
    messageId: str
    sendId: str
    template: str
    content: dict[str, Any]
    createdAt: str | None
    deliveredAt: str | None
    viewedAt: str | None
    clickedAt: str | None


class InboxPage(_View, kw_only=True):
    messages: list[InboxMessage]
    next: str | None
    unseen: int


class SendCounts(_View, kw_only=True):
    started: int
    active: int
    stopped: int
    completed: int
    cancelled: int
    failed: int
    throttled: int | msgspec.UnsetType = msgspec.UNSET  # once the template throttles (rule 13)


class StepMetrics(_View, kw_only=True):
    step: int | None  # null: per channel, for an engagement-ordered template (rule 14)
    channel: str
    requested: int
    delivered: int
    viewed: int | None
    clicked: int
    failed: int
    skipped: int
    stopped: int
    escalated: int
    deferred: int | msgspec.UnsetType = msgspec.UNSET  # once the template has quiet hours (rule 12)


class TemplateMetrics(_View, kw_only=True):
    template: str
    sends: SendCounts
    steps: list[StepMetrics]


class RowError(_View, kw_only=True):
    row: int
    message: str


class CampaignCreated(_View, kw_only=True):
    id: str
    status: str
    name: str | None
    template: str
    templateVersion: int
    scheduledAt: str
    createdAt: str
    recipients: int
    rejectedRows: int
    errors: list[RowError]


class CampaignSummary(_View, kw_only=True):
    id: str
    name: str | None
    status: str
    template: str
    templateVersion: int
    scheduledAt: str
    createdAt: str
    finishedAt: str | None
    recipients: int
    sendsStarted: int
    rejectedRows: int
    problem: str | msgspec.UnsetType = msgspec.UNSET


class CampaignView(CampaignSummary, kw_only=True):
    metrics: TemplateMetrics


class SendList(_View, kw_only=True):
    sends: list[SendView]
    next: str | None


class CampaignList(_View, kw_only=True):
    campaigns: list[CampaignSummary]
    next: str | None


class ClockView(_View, kw_only=True):
    now: str
    mode: str


class Status(_View, kw_only=True):
    status: str


VIEWS = (Error, TemplateView, TemplateList, RecipientView, SendView, EventsResult, InboxPage,
         TemplateMetrics, ClockView, Status, CampaignCreated, CampaignView, CampaignList)
_REASONS = {400: "Malformed body", 401: "Missing or unknown API key", 403: "Scope does not allow it",
            404: "Not found", 409: "Conflict", 413: "Body too large", 415: "Unsupported content type",
            422: "Invalid value (details name the JSON path)", 503: "Overloaded or unavailable (Retry-After)"}
_SUCCESS = {200: "OK", 201: "Created", 202: "Accepted", 204: "No content"}
_PARAM = re.compile(r"\{(\w+)\}")


def _op_id(route: Route) -> str:
    return route.method.lower() + "_" + re.sub(r"\W+", "_", route.path).strip("_")


def _operation(route: Route, ref: Callable[[Any], dict[str, Any]]) -> dict[str, Any]:
    op: dict[str, Any] = {"summary": route.summary,
                          "operationId": _op_id(route)}
    params = [{"name": n, "in": "path", "required": True, "schema": {"type": "string"}}
              for n in _PARAM.findall(route.path)]
    params += [{"name": n, "in": "query", "required": False, "description": d, "schema": s}
               for n, d, s in route.query]
    if params:
        op["parameters"] = params
    if route.body is not None:
        content = {"application/json": {"schema": ref(route.body)}}
        if route.ndjson_item is not None:
            content["application/x-ndjson"] = {
                "schema": {"type": "string", "description": f"one JSON object a line, at most {MAX_EVENTS} lines"},
                "x-item-schema": ref(route.ndjson_item)}
        for media, description in route.raw_body:
            content[media] = {"schema": {"type": "string", "description": description}}
        op["requestBody"] = {"required": True, "content": content}
    answer: dict[str, Any] | None = None
    if route.response is not None:
        answer = {"application/json": {"schema": ref(route.response)}}
    elif route.raw_response:
        answer = {route.raw_response: {"schema": {"type": "string"}}}
    responses: dict[str, Any] = {}
    for status, description, *own in sorted(((route.ok, _SUCCESS.get(route.ok, "OK")), *route.also_ok)):
        body = {"application/json": {"schema": ref(own[0])}} if own else answer
        responses[str(status)] = {"description": description} if body is None or status == 204 \
            else {"description": description, "content": body}
    errors = set(route.errors)
    if route.need is not None:
        errors |= {401, 403}
        op["security"] = [{"bearer": []}] + ([{"recipientToken": []}] if route.recipient_token else [])
    if route.body is not None:
        errors |= {400, 413, 415, 422}
    for status in sorted(errors):
        responses[str(status)] = {"description": _REASONS.get(status, "Error"),
                                  "content": {"application/json": {"schema": ref(Error)}}}
    op["responses"] = responses
    return op


def _alternatives(body: Any) -> tuple[Any, ...]:
    return body if isinstance(body, tuple) else (body,)


def document(routes: list[Route], version: str = "0.1.0") -> dict[str, Any]:
    """The OpenAPI 3.1 document of `routes`."""
    types: list[Any] = list(VIEWS)
    for r in routes:
        for t in (*_alternatives(r.body), r.response, r.ndjson_item,
                  *(a for ok in r.also_ok for a in _alternatives(ok[2] if len(ok) > 2 else None))):
            if t is not None and t not in types:
                types.append(t)
    schemas, components = msgspec.json.schema_components(types, ref_template="#/components/schemas/{name}")
    by_type = dict(zip(types, schemas))

    def ref(t: Any) -> dict[str, Any]:
        return {"oneOf": [by_type[a] for a in t]} if isinstance(t, tuple) else by_type[t]

    paths: dict[str, dict[str, Any]] = {}
    for r in routes:
        paths.setdefault(r.path, {})[r.method.lower()] = _operation(r, ref)
    return {
        "openapi": "3.1.0",
        "info": {"title": "cascade", "version": version,
                 "description": "Notification sequencing: escalate across channels only when engagement "
                                "does not come. Errors are {\"error\": {code, message, details}}."},
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "description": "API key"},
                "recipientToken": {"type": "apiKey", "in": "header", "name": "X-Recipient-Token",
                                   "description": "hex(HMAC-SHA256(inbox_secret, recipientId))"},
            },
        },
    }
