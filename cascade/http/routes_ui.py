"""The dashboard: static files under `/ui/`, read from the package (ui/).

Owns how those files are served: every file of `cascade/http/ui/` is read
once, at app build, into memory (about 200 KB), and answered from there
with its content type, an ETag (304 on a match), `nosniff` and a strict
Content-Security-Policy (scripts and styles from this origin only, no
inline code, no other origin to talk to). `/ui` redirects to `/ui/`, which
is `index.html`. Files under `vendor/` carry their version in their name,
so they are cached for a week; the app's own files are revalidated on every
load, so an upgrade shows at once.

The files hold no data, so they need no key: the page signs in with an API
key and reads everything through the public API. The routes are public
rows of the front middleware (no auth, no in-flight count, served during
recovery) but stay out of the OpenAPI document, which describes the API.
"""

from __future__ import annotations

import functools
import hashlib
import mimetypes
from importlib import resources
from typing import Any

from aiohttp import web
from aiohttp.web_urldispatcher import AbstractRoute

from .errors import error_response
from .openapi import Route

__all__ = ["CSP", "install", "load_files"]

CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "font-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
    ".md": "text/markdown; charset=utf-8",
    ".txt": "text/plain; charset=utf-8",
}
_REVALIDATE = "no-cache"  # use the copy only after an ETag check
_VENDOR = "public, max-age=604800, immutable"  # versioned file names


class _File:
    __slots__ = ("body", "headers")

    def __init__(self, name: str, body: bytes) -> None:
        self.body = body
        suffix = name[name.rfind("."):] if "." in name else ""
        kind = _TYPES.get(suffix) or mimetypes.guess_type(name)[0] or "application/octet-stream"
        self.headers = {
            "Content-Type": kind,
            "ETag": '"' + hashlib.sha256(body).hexdigest()[:32] + '"',
            "Cache-Control": _VENDOR if name.startswith("vendor/") else _REVALIDATE,
            "Content-Security-Policy": CSP,
            "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "no-referrer",
            "Cross-Origin-Opener-Policy": "same-origin",
        }


@functools.cache
def load_files() -> dict[str, _File]:
    """Every file of the package's ui/ directory, by its path below it (read once a process)."""
    root = resources.files("cascade.http").joinpath("ui")
    found: dict[str, _File] = {}

    def walk(node: Any, prefix: str) -> None:
        for child in node.iterdir():
            name = prefix + child.name
            if child.is_dir():
                walk(child, name + "/")
            elif not child.name.startswith("."):
                found[name] = _File(name, child.read_bytes())

    if root.is_dir():
        walk(root, "")
    return found


def _routes() -> list[Route]:
    files = load_files()

    async def redirect(request: web.Request) -> web.StreamResponse:
        return web.Response(status=308, headers={"Location": "/ui/", "Cache-Control": _REVALIDATE})

    async def serve(request: web.Request) -> web.StreamResponse:
        name = request.match_info["path"] or "index.html"
        found = files.get(name)
        if found is None:
            return error_response(404, "not_found", f"no such dashboard file: {request.path}")
        if request.headers.get("If-None-Match") == found.headers["ETag"]:
            return web.Response(status=304, headers={k: v for k, v in found.headers.items() if k != "Content-Type"})
        return web.Response(body=found.body, headers=found.headers)

    return [
        Route("GET", "/ui", redirect, None, "The dashboard (redirects to /ui/)"),
        Route("GET", "/ui/{path:.*}", serve, None, "The dashboard's files"),
    ]


def install(app: web.Application, public: dict[AbstractRoute, Route]) -> None:
    """Add the dashboard's routes to `app` as public rows of the front middleware."""
    for route in _routes():
        public[app.router.add_route(route.method, route.path, route.handler)] = route
