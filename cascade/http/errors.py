"""Every failure becomes the one JSON error body of API.md, here and only here.

Owns: `ApiError` (refusals by the front door itself: shape, size, content
type, auth, back-pressure), `json_response` (the one encoder), and
`response_for_exception`, the single exception -> response mapping that the
front middleware applies (STYLE §5). Invariants: an error body is always
`{"error": {"code", "message", "details": [{"path", "message"}]}}`; domain
errors keep the status hint and code the engine gave them; only an
unexpected exception becomes 500 `internal`, and it is logged with the
request id.
"""

from __future__ import annotations

import logging
from typing import Any, Iterable, Mapping

import msgspec
from aiohttp import web

from ..domain.errors import CascadeError, Overloaded

__all__ = ["ApiError", "error_body", "error_info", "error_response", "json_response", "response_for_exception"]

_log = logging.getLogger("cascade.http")
_encode = msgspec.json.Encoder().encode

Detail = tuple[str, str]

# The code a bare HTTP status gets when aiohttp itself refuses a request.
_CODES = {
    400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
    405: "method_not_allowed", 409: "conflict", 413: "payload_too_large",
    415: "unsupported_media_type", 422: "invalid", 429: "too_many_requests", 503: "unavailable",
}


class ApiError(Exception):
    """A refusal decided by the HTTP layer, with its status and error code."""

    def __init__(self, status: int, code: str, message: str, details: Iterable[Detail] = (),
                 headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = list(details)
        self.headers = dict(headers) if headers else None


def json_response(obj: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> web.Response:
    # Plain header dict instead of content_type=...: aiohttp skips parsing it.
    hdrs = {"Content-Type": "application/json"}
    if headers:
        hdrs.update(headers)
    return web.Response(body=_encode(obj), status=status, headers=hdrs)


def error_info(code: str, message: str, details: Iterable[Detail] = ()) -> dict[str, Any]:
    """The inside of an error body: {"code", "message", "details": [{"path", "message"}]}."""
    return {"code": code, "message": message, "details": [{"path": p, "message": m} for p, m in details]}


def error_body(exc: ApiError | CascadeError, prefix: str = "$") -> dict[str, Any]:
    """The `error` of one item of a batch, as its own request would have had
    it, with JSON paths under the item's own (`prefix`, e.g. `$.sends[3]`)."""
    details = [(prefix + p[1:] if p.startswith("$") and not p.startswith(prefix) else p, m) for p, m in exc.details]
    return error_info(exc.code, exc.message, details)


def error_response(status: int, code: str, message: str, details: Iterable[Detail] = (),
                   headers: Mapping[str, str] | None = None) -> web.Response:
    return json_response({"error": error_info(code, message, details)}, status, headers)


def _from_http_exception(exc: web.HTTPException, request: web.Request) -> web.Response:
    status = exc.status
    headers: dict[str, str] = {}
    if status == 404:
        message = f"no such resource: {request.method} {request.path}"
    elif status == 405:
        allowed = exc.headers.get("Allow", "")
        headers["Allow"] = allowed
        message = f"method {request.method} is not allowed on {request.path}; allowed: {allowed or 'none'}"
    elif status == 413:
        message = f"the request body is too large: {exc.text or exc.reason}"
    else:
        message = exc.text or exc.reason
    return error_response(status, _CODES.get(status, "error"), message, (), headers)


def response_for_exception(exc: Exception, request: web.Request, request_id: str) -> web.Response:
    """The single mapping of an exception to the response the client sees."""
    if isinstance(exc, ApiError):
        return error_response(exc.status, exc.code, exc.message, exc.details, exc.headers)
    if isinstance(exc, CascadeError) and 400 <= exc.status_hint < 500:
        return error_response(exc.status_hint, exc.code, exc.message, exc.details)
    if isinstance(exc, Overloaded):
        return error_response(503, exc.code, exc.message, exc.details,
                              {"Retry-After": str(max(1, int(exc.retry_after_s)))})
    if isinstance(exc, web.HTTPException) and exc.status >= 400:
        return _from_http_exception(exc, request)
    _log.error("request %s %s %s failed", request_id, request.method, request.path, exc_info=exc,
               extra={"request_id": request_id})
    return error_response(500, "internal", f"internal error; quote request id {request_id} when reporting it")
