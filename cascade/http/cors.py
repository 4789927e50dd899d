"""CORS for the browser-facing routes: the in-app inbox and its stream.

Owns which web pages may call those routes (`server.cors_origins`) and the
headers that say so. Only the paths given to `install` are CORS-enabled;
the admin API never answers a browser's cross-origin call. With no origins
configured there is no middleware and no response hook (they would cost
every request): the paths get plain OPTIONS routes that refuse (403) alike.

- A request from a listed `Origin` to one of those paths gets
  `Access-Control-Allow-Origin: <origin>` (and `Expose-Headers`), added as
  the response is prepared, so errors and the event stream carry it too.
  Every response of those paths says `Vary: Origin`, so a cache never
  hands one origin's answer to another.
- A preflight (`OPTIONS` with `Access-Control-Request-Method`) to those
  paths is answered here: 204 with Allow-Methods, Allow-Headers and
  Max-Age for a listed origin; 403 with the JSON error body for any other,
  which names the setting, so the refusal is plain in the browser's
  network panel instead of a silent missing header.
- `"*"` in the list allows every origin (each gets its own origin back:
  no credentials are involved, so this is the same as a literal `*`).
"""

from __future__ import annotations

import re
from typing import Awaitable, Callable, Iterable

from aiohttp import web

from .errors import error_response

__all__ = ["ALLOW_HEADERS", "MAX_AGE_S", "Cors"]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

ALLOW_HEADERS = "Authorization, Content-Type, X-Recipient-Token, X-Request-Id"
EXPOSE_HEADERS = "Retry-After, X-Request-Id"
MAX_AGE_S = 600  # how long a browser may cache a preflight's answer


def _pattern(path: str) -> str:
    """A route template ("/v1/recipients/{id}/inbox") as a regular expression."""
    return "/".join("[^/]+" if part.startswith("{") else re.escape(part) for part in path.split("/"))


class Cors:
    def __init__(self, origins: Iterable[str]) -> None:
        self._origins = frozenset(o.lower() for o in origins)
        self._any = "*" in self._origins
        self._paths: re.Pattern[str] | None = None
        self._methods = "GET, POST"

    @property
    def enabled(self) -> bool:
        """Whether some origin is listed (then `middleware` must be installed)."""
        return bool(self._origins)

    def install(self, app: web.Application, paths: Iterable[str]) -> None:
        """CORS-enable `paths` (route templates) of `app`."""
        paths = list(paths)
        self._paths = re.compile("|".join(_pattern(p) for p in paths)) if paths else None
        if self._origins:
            app.on_response_prepare.append(self._on_prepare)
            return
        for path in paths:
            app.router.add_route("OPTIONS", path, self._refuse)

    async def _refuse(self, request: web.Request) -> web.StreamResponse:
        origin = request.headers.get("Origin", "")
        return error_response(403, "forbidden", f"origin {origin!r} is not allowed to call {request.path}; "
                              "list it in server.cors_origins")

    def _enabled(self, path: str) -> bool:
        return self._paths is not None and self._paths.fullmatch(path) is not None

    def allowed(self, origin: str) -> bool:
        return self._any or origin.lower() in self._origins

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.method != "OPTIONS" or "Access-Control-Request-Method" not in request.headers \
                or not self._enabled(request.path):
            return await handler(request)
        origin = request.headers.get("Origin", "")
        if not self.allowed(origin):
            return await self._refuse(request)
        return web.Response(status=204, headers={
            "Access-Control-Allow-Origin": origin, "Vary": "Origin",
            "Access-Control-Allow-Methods": self._methods, "Access-Control-Allow-Headers": ALLOW_HEADERS,
            "Access-Control-Max-Age": str(MAX_AGE_S)})

    async def _on_prepare(self, request: web.Request, response: web.StreamResponse) -> None:
        if not self._enabled(request.path) or "Access-Control-Allow-Origin" in response.headers:
            return
        response.headers.add("Vary", "Origin")
        origin = request.headers.get("Origin")
        if origin is not None and self.allowed(origin):
            response.headers["Access-Control-Allow-Origin"] = origin
            response.headers["Access-Control-Expose-Headers"] = EXPOSE_HEADERS
