"""Operational endpoints, open without auth: liveness, readiness,
Prometheus metrics (the handler comes from `http/metrics.py` when given)
and the OpenAPI document (built once, on first request, from every route).
"""

from __future__ import annotations

from typing import Any, Callable

import msgspec
from aiohttp import web

from .errors import error_response, json_response
from .openapi import Route, Status

__all__ = ["routes"]


def routes(ready: Callable[[], bool], metrics_handler: Any, document: Callable[[], dict[str, Any]]) -> list[Route]:
    cached: list[bytes] = []

    async def healthz(request: web.Request) -> web.Response:
        return json_response({"status": "ok"})

    async def readyz(request: web.Request) -> web.Response:
        if ready():
            return json_response({"status": "ready"})
        return error_response(503, "not_ready", "recovery is still running", (), {"Retry-After": "1"})

    async def empty_metrics(request: web.Request) -> web.Response:
        return web.Response(text="", content_type="text/plain")

    async def openapi(request: web.Request) -> web.Response:
        if not cached:
            cached.append(msgspec.json.encode(document()))
        return web.Response(body=cached[0], headers={"Content-Type": "application/json"})

    return [
        Route("GET", "/healthz", healthz, None, "200 while the process runs", response=Status),
        Route("GET", "/readyz", readyz, None, "200 once recovery is done, 503 before", response=Status,
              errors=(503,)),
        Route("GET", "/metrics", metrics_handler or empty_metrics, None, "Prometheus metrics",
              raw_response="text/plain"),
        Route("GET", "/openapi.json", openapi, None, "This document", raw_response="application/json"),
    ]
