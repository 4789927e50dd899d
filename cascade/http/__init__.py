"""The HTTP front door: the API of docs/api.md on aiohttp.

`build_app(engine, settings, ...)` is the whole surface; `server.py` runs it.
"""

from .app import ENGINE_KEY, ROUTES_KEY, SETTINGS_KEY, AdminHooks, MetricsHooks, build_app
from .auth import recipient_token
from .errors import ApiError

__all__ = ["ENGINE_KEY", "ROUTES_KEY", "SETTINGS_KEY", "AdminHooks", "ApiError", "MetricsHooks", "build_app",
           "recipient_token"]
