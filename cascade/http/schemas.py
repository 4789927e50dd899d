"""Request bodies: one msgspec definition each, used to decode and validate
requests and (through `openapi.py`) to document them.

Owns the Structs, their cached decoders, and `read_body`/`decode`, which turn
bytes into a Struct or an `ApiError`: 415 for a content type the endpoint
does not take, 413 over the size limit, 400 for bytes that are not JSON or
not the top-level shape, 422 for a value of the wrong type, naming its JSON
path. Domain rules (allowed channels, wait windows, id formats) are the
engine's: types here stay loose (plain `str`/`int`, and any value at all for
`waitMinutes`) so the engine's messages, which name the allowed values, reach
the client.
"""

from __future__ import annotations

import datetime as _dt
import re
from typing import Annotated, Any, Iterable, TypeVar

import msgspec
from aiohttp import web

from ..domain.channels import WAIT_MINUTES
from .errors import ApiError

__all__ = [
    "CampaignBody", "ClockAdvance", "EventBatch", "EventBody", "MAX_EVENTS", "RecipientBody", "RecipientInline",
    "SendBody", "StepBody", "TemplateBody", "TemplateConfig", "WebPushKeys", "WebPushSubscription", "decode",
    "decoder_for",
    "check_json", "json_problem", "not_json", "parse_any", "read_body", "validation_error",
]

MAX_EVENTS = 10_000
MAX_SENDS = 1_000  # items in one POST /v1/sends batch
MAX_ADVANCE_S = 10 * 366 * 86400.0  # past this, times leave what RFC 3339 years can print
MAX_DEPTH = 32  # data/content nesting: generous for templates, far from any recursion limit
_INT_RANGE = (-(2**63), 2**64 - 1)  # what the msgpack journal can store

Detail = tuple[str, str]


class _Body(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, gc=False):
    """Decoded from JSON, a body cannot be part of a reference cycle, so it
    is not tracked by the garbage collector (a 1,000-event batch is 1,000
    fewer objects for the collector to walk)."""


def _doc(description: str, **extra: Any) -> msgspec.Meta:
    return msgspec.Meta(description=description, **extra)


class StepBody(_Body):
    """One channel step of a template."""

    channel: Annotated[str, _doc("inapp, push, email or sms; one step per channel")]
    stopCondition: Annotated[str, _doc("delivered, viewed or clicked (one the channel can emit); "
                                       "every step of a sequence but the last")] | None = None
    # Any value is taken here so that the engine's rule, which names the allowed
    # windows, answers every wrong one ("5", 5.5, true) as it does 15; the
    # document still says what is allowed.
    waitMinutes: Annotated[Any, _doc("5, 10, 30, 60, 240 or 1440; every step of a sequence but the last",
                                     extra_json_schema={"anyOf": [{"type": "integer", "enum": list(WAIT_MINUTES)},
                                                                  {"type": "null"}]})] = None
    content: Annotated[dict[str, Any], _doc("free-form; {{dot.path}} placeholders in strings are filled from "
                                            "the send's data and recipient")] = {}


class QuietHoursBody(_Body):
    start: Annotated[Any, _doc("24-hour HH:MM in the recipient's time zone", extra_json_schema={"type": "string"})]
    end: Annotated[Any, _doc("24-hour HH:MM; may be earlier than start (wraps midnight)",
                             extra_json_schema={"type": "string"})]
    channels: Annotated[Any, _doc("channels deferred; default every channel but inapp (never deferred)",
                                  extra_json_schema={"type": ["array", "null"], "items": {"type": "string"}})] = None


class ThrottleBody(_Body):
    limit: Annotated[Any, _doc("sends of the template a recipient may start per window, 1-1000",
                               extra_json_schema={"type": "integer", "minimum": 1, "maximum": 1000})]
    windowMinutes: Annotated[Any, _doc("1-10080", extra_json_schema={"type": "integer", "minimum": 1,
                                                                     "maximum": 10080})]


class TemplateConfig(_Body):
    sequenceEnabled: Annotated[bool, _doc("steps fire one after another (else all at once)")] = False
    # The engine's rules check these values and name the path of each wrong
    # one (API: Validation); here only their shape is documented.
    quietHours: Annotated[QuietHoursBody | None,
                          _doc("rule 12: steps due inside these hours wait for their end")] = None
    throttle: Annotated[ThrottleBody | None, _doc("rule 13: at most limit sends per recipient per window")] = None
    order: Annotated[Any, _doc("template (default) or engagement (rule 14)",
                               extra_json_schema={"type": ["string", "null"],
                                                  "enum": ["template", "engagement", None]})] = None


class TemplateBody(_Body, kw_only=True):
    """A template: 1 to 4 channel steps (a sequence needs at least two)."""

    name: Annotated[str, _doc("defaults to the template id")] | None = None
    channels: list[StepBody]
    config: TemplateConfig | None = None


class WebPushKeys(_Body):
    """A subscription's keys, as the browser's PushSubscription.toJSON() gives them."""

    p256dh: Annotated[str, _doc("base64url of the subscription's P-256 public key (65 bytes, uncompressed)")]
    auth: Annotated[str, _doc("base64url of the 16-byte authentication secret")]


class WebPushSubscription(_Body):
    """One browser's Web Push subscription: PushSubscription.toJSON() as it is."""

    endpoint: Annotated[str, _doc("the push service's https:// URL (http:// only for 127.0.0.1, ::1, localhost)")]
    keys: WebPushKeys
    expirationTime: Annotated[Any, _doc("accepted and ignored (browsers send null)")] = None


class RecipientBody(_Body):
    """A recipient's addresses, time zone and per-channel preferences; PUT replaces them all."""

    email: str | None = None
    phone: Annotated[str, _doc("digits, optional leading +")] | None = None
    pushTokens: list[str] | None = None
    webPush: Annotated[list[WebPushSubscription], _doc(
        "Web Push subscriptions (at most 20; the webpush provider posts to each)")] | None = None
    timezone: Annotated[str, _doc("IANA time zone name, e.g. Europe/Berlin; absent: UTC")] | None = None
    preferences: Annotated[dict[str, bool], _doc("channel: false opts out of that channel")] | None = None


class RecipientInline(RecipientBody, kw_only=True):
    """A recipient given inside a send: upserted (only the fields it names) before the send starts."""

    id: Annotated[str, _doc("1-128 characters without spaces or '/'")]


class SendBody(_Body):
    """Start one template for one recipient."""

    template: str
    recipient: Annotated[str | RecipientInline, _doc("a recipient id, or a recipient object to upsert")]
    data: Annotated[dict[str, Any], _doc("fills the content's {{placeholders}}")] | None = None
    idempotencyKey: Annotated[str, msgspec.Meta(min_length=1, max_length=256, description=(
        "kept 24 h: the same key with the same body answers the same send, with another body 409"))] | None = None


class SendBatch(_Body):
    """Up to 1,000 sends; each is answered on its own (its status, its send or its error)."""

    sends: Annotated[list[SendBody], msgspec.Meta(max_length=MAX_SENDS)]


class CampaignBody(_Body, kw_only=True):
    """One template version for many recipients, now or at scheduledAt (JSON; text/csv is the other way in)."""

    template: str
    recipients: Annotated[list[Annotated[str | RecipientInline, _doc(
        "a recipient id, or a recipient object to upsert")]], _doc(
        "a bad entry is reported (row = its 1-based position) and skipped; of a repeated id the first wins")]
    data: Annotated[dict[str, Any], _doc("fills the content's {{placeholders}} for every recipient")] | None = None
    scheduledAt: Annotated[_dt.datetime, msgspec.Meta(tz=True, description=(
        "RFC 3339; absent or past: start now"))] | None = None
    name: Annotated[str, msgspec.Meta(max_length=200)] | None = None


class EventBody(_Body, kw_only=True):
    """One engagement signal, naming its message by messageId or by sendId + channel."""

    messageId: Annotated[str, _doc("<sendId>.<step>")] | None = None
    sendId: str | None = None
    channel: str | None = None
    type: Annotated[str, _doc("delivered, viewed, clicked or failed")]
    at: Annotated[_dt.datetime, msgspec.Meta(tz=True, description="RFC 3339; default: arrival")] | None = None


class EventBatch(_Body):
    """Up to 10,000 events; a bad item is reported and never fails the rest."""

    events: Annotated[list[EventBody], msgspec.Meta(max_length=MAX_EVENTS)]


class ClockAdvance(_Body):
    """Manual clock only: move time forward, firing due timers in deadline order."""

    advanceSeconds: Annotated[float, msgspec.Meta(ge=0, le=MAX_ADVANCE_S)]


T = TypeVar("T")
_any: msgspec.json.Decoder[Any] = msgspec.json.Decoder()
_decoders: dict[Any, msgspec.json.Decoder[Any]] = {}


def decoder_for(tp: type[T]) -> msgspec.json.Decoder[T]:
    dec = _decoders.get(tp)
    if dec is None:
        dec = _decoders[tp] = msgspec.json.Decoder(tp)
    return dec


_JSON_TYPES = frozenset({"application/json"})


async def read_body(request: web.Request, max_bytes: int, types: frozenset[str] = _JSON_TYPES) -> bytes:
    """The raw body, once its content type and declared size are acceptable."""
    if request.content_type not in types:
        raise ApiError(415, "unsupported_media_type",
                       f"Content-Type {request.headers.get('Content-Type', '(none)')!r} is not accepted here; "
                       f"send {' or '.join(sorted(types))}")
    length = request.content_length
    if length is not None and length > max_bytes:
        raise ApiError(413, "payload_too_large", f"the body is {length} bytes; the limit is {max_bytes}")
    return await request.read()  # client_max_size bounds a body without Content-Length


_MISSING = re.compile(r"Object missing required field `([^`]*)`")
_UNKNOWN = re.compile(r"Object contains unknown field `([^`]*)`")


def _split(exc: msgspec.ValidationError) -> tuple[str, str]:
    text = str(exc)
    message, sep, rest = text.rpartition(" - at `")
    if not sep:
        return text, "$"
    return message, rest[:-1]


def validation_error(exc: msgspec.ValidationError, prefix: str = "$") -> ApiError:
    """A msgspec type error as 400 (wrong top-level shape) or 422 (naming the path)."""
    message, path = _split(exc)
    path = prefix + path[1:]
    for pattern in (_MISSING, _UNKNOWN):
        m = pattern.match(message)
        if m:
            path = f"{path}.{m.group(1)}"
            break
    else:
        if path == prefix:
            return ApiError(400, "bad_request", f"the body does not have the expected shape: {message}",
                            [(path, message)])
    return ApiError(422, "invalid", f"invalid value at {path}: {message}", [(path, message)])


def not_json(body: bytes, exc: Exception) -> ApiError:
    return ApiError(400, "bad_request", f"the body is not valid JSON: {exc}" if body else "the body is empty")


def parse_any(body: bytes) -> Any:
    """Plain JSON, or ApiError 400 (422 for a number out of range)."""
    try:
        return _any.decode(body)
    except msgspec.ValidationError as exc:
        raise validation_error(exc) from None
    except Exception as exc:  # DecodeError, UnicodeDecodeError, RecursionError: all "not JSON"
        raise not_json(body, exc) from None


def decode(decoder: msgspec.json.Decoder[T], body: bytes) -> T:
    try:
        return decoder.decode(body)
    except msgspec.ValidationError as exc:
        # msgspec validates while it parses: make sure malformed JSON that
        # failed validation first is still reported as malformed (400).
        parse_any(body)
        raise validation_error(exc) from None
    except Exception as exc:
        raise not_json(body, exc) from None


def json_problem(value: Any, path: str, depth: int = 0) -> Detail | None:
    """The first part of a free-form JSON value (send data, template content)
    that the engine could not store: too deep, or an integer out of range."""
    if isinstance(value, dict):
        if depth >= MAX_DEPTH:
            return (path, f"nested deeper than {MAX_DEPTH} levels")
        for k, v in value.items():
            if isinstance(v, (dict, list, int)):
                found = json_problem(v, f"{path}.{k}", depth + 1)
                if found:
                    return found
    elif isinstance(value, list):
        if depth >= MAX_DEPTH:
            return (path, f"nested deeper than {MAX_DEPTH} levels")
        for i, v in enumerate(value):
            if isinstance(v, (dict, list, int)):
                found = json_problem(v, f"{path}[{i}]", depth + 1)
                if found:
                    return found
    elif isinstance(value, int) and not _INT_RANGE[0] <= value <= _INT_RANGE[1]:
        return (path, f"integer {value} is out of range ({_INT_RANGE[0]} to {_INT_RANGE[1]})")
    return None


def check_json(items: Iterable[tuple[Any, str]]) -> None:
    problems = [p for value, path in items if (p := json_problem(value, path)) is not None]
    if problems:
        raise ApiError(422, "invalid", f"invalid value at {problems[0][0]}: {problems[0][1]}", problems)


def query_limit(text: str | None, maximum: int, default: int = 50) -> int:
    """A listing's `limit` query parameter, or 422 naming it."""
    if text is None:
        return default
    n = int(text) if text.isascii() and text.isdigit() and len(text) <= 6 else 0
    if not 1 <= n <= maximum:
        raise ApiError(422, "invalid", f"limit {text!r} must be an integer from 1 to {maximum}",
                       [("limit", f"an integer from 1 to {maximum}")])
    return n
