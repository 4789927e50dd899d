"""The request key under which the front middleware stamps when a request
that may carry a signal reached the server (engine clock time; see app.py).
A typed `web.RequestKey` where aiohttp has one (3.14+ warns on plain string
keys), a string before that."""

from __future__ import annotations

from typing import Any

from aiohttp import web

__all__ = ["ARRIVAL"]

_RequestKey: Any = getattr(web, "RequestKey", None)
ARRIVAL: Any = _RequestKey("cascade_arrival", float) if _RequestKey is not None else "cascade.arrival"
