"""The aiohttp application: routes, the front middleware, app state.

Owns `build_app` and the per-request plumbing every route shares, kept in
ONE middleware because each aiohttp middleware layer costs a few
microseconds on a path that must carry thousands of requests a second:

- a request id (the client's `X-Request-Id` if it is a sane token, else a
  fresh one) on every response;
- back-pressure: beyond `server.max_inflight_requests` requests in flight,
  503 with `Retry-After` (operational endpoints are exempt), and the same
  while recovery runs, so nothing answers from half-loaded state; a route
  that starts sends is refused at once, before its body is read, while the
  server is behind (mailbox.py), so signals keep their place;
- arrival: a route that may carry a signal is stamped with the time it
  reached the server and held in the engine's in-flight set until it is
  answered, so no window closes on a deadline after it (API.md rule 11);
- auth (auth.py) for the routes that need it;
- the single exception -> error body mapping (errors.py);
- one DEBUG log line per request: id, method, route, status, ms.

The optional metrics middleware is installed outside it, so it sees the
final status of every request. The app does not start or stop the engine.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import re
import time
from collections import deque
from typing import Any, Awaitable, Callable, Protocol

from aiohttp import web
from aiohttp.web_urldispatcher import AbstractRoute

from ..campaigns.desk import CampaignDesk
from ..config import Settings
from ..engine import Engine
from ..engine.send_pacer import SendPacer
from ..engine.series_sampler import SeriesSampler
from . import (
    routes_admin,
    routes_campaigns,
    routes_events,
    routes_inbox,
    routes_ops,
    routes_recipients,
    routes_sends,
    routes_stats,
    routes_templates,
    routes_ui,
)
from .arrival import ARRIVAL
from .auth import READ, Authorizer
from .cors import Cors
from .errors import ApiError, error_response, response_for_exception
from .inbox_stream import InboxStreams
from .openapi import Route, document
from .routes_admin import AdminHooks

__all__ = ["ARRIVAL", "AdminHooks", "ENGINE_KEY", "GATE_KEY", "Gate", "HOT_KEY", "MetricsHooks", "ROUTES_KEY", "SETTINGS_KEY",
           "build_app"]

_log = logging.getLogger("cascade.http")

ENGINE_KEY = web.AppKey("engine", Engine)
SETTINGS_KEY = web.AppKey("settings", Settings)
ROUTES_KEY = web.AppKey("routes", list)  # the operation table, for metrics labels and docs
HOT_KEY = web.AppKey("hot", dict)  # (method, path) -> aiohttp route of each hot route, for the lean door
Gate = Callable[[web.Request], "tuple[web.Response, str] | None"]
GATE_KEY: web.AppKey[Gate] = web.AppKey("gate")  # the refusal a hot request gets before its handler runs

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
LAG_PROBE_S = 0.01  # how often the event loop's lag is measured
READ_HOLD = 3  # probe periods the read horizon stays put after the loop was late
_GATED = "cascade.gated"  # request key: the lean door's gate let it through
_SANE_ID = re.compile(r"[A-Za-z0-9._:+=-]{1,128}")
_RETRY = {"Retry-After": "1"}


class MetricsHooks(Protocol):
    """What `http/metrics.HttpMetrics` provides: a middleware observing
    request durations and the `GET /metrics` handler. (A protocol, so this
    module does not import prometheus machinery.)"""

    middleware: Any
    handler: Handler

    def observe_request(self, request: web.Request, status: int, seconds: float) -> None: ...


class _Front:
    """State of the front middleware: in-flight count, route table, ids."""

    def __init__(self, engine: Engine, settings: Settings, ready: Callable[[], bool]) -> None:
        self.engine = engine
        self.ready = ready
        self.limit = settings.server.max_inflight_requests
        self.pacer = SendPacer(settings.engine.pace_lag_s, cpu_share=settings.engine.pace_cpu_share)  # fed by the lag probe
        self.inflight = 0
        self.routes: dict[AbstractRoute, Route] = {}
        auth = Authorizer(settings.auth)
        self.auth = auth if auth.enabled else None
        self._prefix = os.urandom(4).hex()
        self._ids = itertools.count(1)
        self._behind_why: str | None = None
        self._behind_fresh = False
        self._refused_for: tuple[str, str] | None = None
        self._refused: web.Response | None = None

    def new_id(self) -> str:
        return f"{self._prefix}-{next(self._ids)}"

    def refusal(self, request: web.Request, route: Route | None) -> tuple[str, str] | None:
        """(code, message) of the 503 a request gets before its handler runs (the in-flight bound,
        readiness, shedding), or None. Synchronous, so the lean door can answer a refused send
        without a task (lean_door.py)."""
        # Public: no bound, gate or auth here (streams are bounded by their own limit and check their own auth).
        if route is not None and (route.need is None or route.stream):
            return None
        # Signals are admitted ahead of everything else (rule 11): they meet
        # the in-flight bound only at twice its size, as a last resort.
        if self.inflight >= (2 * self.limit if route is not None and route.signals else self.limit):
            return "overloaded", f"{self.inflight} requests are in flight; retry shortly"
        if not self.ready():  # recovering or stopping: no half-loaded answers
            return "not_ready", "recovery is still running (or the server is stopping)"
        if route is not None and route.sheddable and (shed := self._shed()) is not None \
                and self._authorized(request, route):
            reason, why = shed
            self.engine.admission.note_shed(reason)
            # The connection stays open: a refused client that reconnects costs
            # both sides a handshake, and a storm of them fills the accept queue,
            # where a signal's new connection then waits a TCP retransmit.
            return "overloaded", why
        return None

    def _shed(self) -> tuple[str, str] | None:
        """(reason, message) a new send is refused for now, or None."""
        why = self._behind()
        if why is not None:
            return "lag", why
        if self.pacer.refuse():
            return "paced", f"new sends are paced at {self.pacer.rate or 0:.0f}/s to keep the server " \
                             "responsive; retry shortly"
        return None

    def _behind(self) -> str | None:
        """`Engine.behind()` as of this pass of the event loop. Why once a pass: under overload a pass
        reads hundreds of sends, nearly all refused, and asking each time (every shard's mailbox,
        every delivery lane) was 6% of the loop's time at 12,000 sends/s offered. Only the refusals
        use it: a send let through is judged again, fresh, by `Admission.admit`, which catches a
        backlog that grew within the pass (sharing this memo with it, measured alternated at 3x
        offered for 60 s: event accept p99 46 and 75 ms against 33 and 20)."""
        if not self._behind_fresh:
            self._behind_why = self.engine.behind()
            self._behind_fresh = True
            asyncio.get_running_loop().call_soon(self._forget_behind)
        return self._behind_why

    def _forget_behind(self) -> None:
        self._behind_fresh = False

    def request_id(self, request: web.Request) -> str:
        rid = request.headers.get("X-Request-Id")
        return rid if rid is not None and _SANE_ID.fullmatch(rid) is not None else self.new_id()

    def gate(self, request: web.Request) -> tuple[web.Response, str] | None:
        """`refusal` for a hot route's request, as the lean door's early answer (which runs no
        middleware; build_app adds the metrics): the response, shared by every request refused for the
        same reason in a row (the door encodes it once; do not change it), and the request's id."""
        started = time.perf_counter()
        route = self.routes.get(request.match_info.route)
        refused = self.refusal(request, route)
        if refused is None:
            request[_GATED] = True  # the middleware does not ask again
            return None
        response = self._refused
        if response is None or refused != self._refused_for:
            response = self._refused = error_response(503, *refused, (), _RETRY)
            self._refused_for = refused
        rid = self.request_id(request)
        if _log.isEnabledFor(logging.DEBUG):
            self._log(request, rid, route, 503, started)
        return response, rid

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        rid = self.request_id(request)
        debug = _log.isEnabledFor(logging.DEBUG)
        started = time.perf_counter() if debug else 0.0
        route = self.routes.get(request.match_info.route)
        public = route is not None and (route.need is None or route.stream)
        response: web.StreamResponse
        signals = route is not None and route.signals
        refused = None if request.get(_GATED) else self.refusal(request, route)
        if refused is not None:
            response = error_response(503, *refused, (), _RETRY)
        else:
            entry = None
            if signals:
                now = self.engine.clock.now()
                arrival = request[ARRIVAL] = self.engine.in_flight.arrival(now)
                entry = self.engine.in_flight.enter(arrival, now)
            if not public:
                self.inflight += 1
            try:
                if self.auth is not None and route is not None and route.need is not None and not public:
                    self.auth.check(request, route.need, route.recipient_token)
                response = await handler(request)
            except Exception as exc:  # noqa: BLE001 - the one place errors become responses
                response = response_for_exception(exc, request, rid)
            finally:
                if not public:
                    self.inflight -= 1
                if entry is not None:
                    self.engine.in_flight.leave(entry)
        if not response.prepared:
            response.headers["X-Request-Id"] = rid
        if debug:
            self._log(request, rid, route, response.status, started)
        return response

    def _authorized(self, request: web.Request, route: Route) -> bool:
        """Would auth let this request through? (A 401 or 403 comes before a 503.)"""
        if self.auth is None or route.need is None:
            return True
        try:
            self.auth.check(request, route.need, route.recipient_token)
        except Exception:  # noqa: BLE001 - the handler path below answers it
            return False
        return True

    @staticmethod
    def _log(request: web.Request, rid: str, route: Route | None, status: int, started: float) -> None:
        ms = (time.perf_counter() - started) * 1000.0
        path = route.path if route is not None else "unmatched"
        _log.debug("request id=%s method=%s route=%s status=%d ms=%.2f", rid, request.method, path, status, ms,
                   extra={"request_id": rid, "method": request.method, "route": path, "status": status, "ms": ms})


def _lag_probe(engine: Engine, pacer: SendPacer) -> Callable[[web.Application], Any]:
    """Measure how late the event loop runs a timer: the part of the backlog
    the engine cannot count (requests read but not yet handled); and tell
    the watermark up to when the loop has read its sockets (arrivals.py).

    Why the sleep before the last one: the loop polls its sockets after the
    callbacks of each pass, so bytes that arrived before a sleep began were
    read by the time it ends; the request's own task starts a pass later,
    and a further sleep covers that. After a late wake (the loop was stalled
    or swamped) the horizon trails by a few sleeps more: the loop is still
    catching up on requests it has read but not yet started. Not under the
    manual clock, whose time moves only when told to (and must not wait)."""
    async def probe(_: web.Application) -> Any:
        watch = getattr(engine.clock, "mode", "real") != "manual"

        async def measure() -> None:
            loop = asyncio.get_running_loop()
            starts: deque[float] = deque(maxlen=READ_HOLD + 2)  # when each of the last probes began
            hold = 0
            while True:
                began, began_at = loop.time(), engine.clock.now()
                await asyncio.sleep(LAG_PROBE_S)
                late = loop.time() - began - LAG_PROBE_S
                engine.loop_lag = late if late > 1e-6 else 0.0  # below a microsecond: float noise, on time
                pacer.observe(engine.backlog_s())
                if late > LAG_PROBE_S:
                    hold = READ_HOLD  # the loop was stalled: it is still working through what it read
                elif hold:
                    hold -= 1
                if watch and starts:
                    # Each wake is a pass through the loop's queue. After a late one the horizon
                    # trails by READ_HOLD more of them, but keeps moving: held still instead, it
                    # stood for as long as the loop kept lagging 10 ms, and with it every window.
                    engine.in_flight.read_up_to(starts[0] if hold else starts[-1])
                starts.append(began_at)

        if watch:  # from the first request on: nothing has been read yet
            engine.in_flight.read_up_to(engine.clock.now())
        task = asyncio.create_task(measure())
        yield
        task.cancel()
        engine.loop_lag = 0.0
        engine.in_flight.read_up_to(None)  # stopping: what is due may fire

    return probe


def _observed(gate: Gate, metrics: MetricsHooks) -> Gate:
    def observed(request: web.Request) -> tuple[web.Response, str] | None:
        started = time.perf_counter()
        refused = gate(request)
        if refused is not None:
            metrics.observe_request(request, refused[0].status, time.perf_counter() - started)
        return refused
    return observed


def build_app(engine: Engine, settings: Settings, *, ready: Callable[[], bool] = lambda: True,
              metrics: MetricsHooks | None = None, admin: AdminHooks | None = None,
              campaigns: CampaignDesk | None = None, series: SeriesSampler | None = None,
              cluster: Any = None) -> web.Application:
    """The whole API of API.md over `engine` (campaigns: their routes, when a desk answers them;
    series: GET /v1/stats/series, when the engine keeps one)."""
    front = _Front(engine, settings, ready)
    middlewares = [front.middleware] if metrics is None else [metrics.middleware, front.middleware]
    cors = Cors(settings.server.cors_origins)
    if cors.enabled:  # a middleware layer costs every request: only when some origin is listed
        middlewares.insert(-1, cors.middleware)  # before the front: it answers preflights itself
    app = web.Application(client_max_size=settings.server.max_body_bytes, middlewares=middlewares)
    table: list[Route] = []
    table += routes_ops.routes(ready, metrics.handler if metrics is not None else None, lambda: document(table))
    table += routes_templates.routes(engine, settings)
    table += routes_recipients.routes(engine, settings)
    streams = InboxStreams(engine, settings)
    inbox = routes_inbox.routes(engine, settings, streams)
    table += inbox
    table += routes_sends.routes(engine, settings)
    table += routes_events.routes(engine, settings)
    if campaigns is not None:
        table += routes_campaigns.routes(engine, campaigns, settings)
    if series is not None:
        table += routes_stats.routes(series)
    if cluster is not None:
        table += routes_stats.routes(cluster)
    table += routes_admin.routes(engine, settings, admin, cluster)
    hot: dict[tuple[str, str], AbstractRoute] = {}
    for route in table:
        added = app.router.add_route(route.method, route.path, route.handler)
        front.routes[added] = route
        if route.hot:
            hot[(route.method, route.path)] = added
    routes_ui.install(app, front.routes)  # the dashboard: public static files, outside the OpenAPI table
    streams.install(app)
    cors.install(app, [route.path for route in inbox])  # the inbox and its stream only, not the admin API
    engine.background.foreground = lambda: front.inflight  # campaign work yields to requests in flight
    app[GATE_KEY] = front.gate if metrics is None else _observed(front.gate, metrics)
    app.cleanup_ctx.append(_lag_probe(engine, front.pacer))
    app[ENGINE_KEY] = engine
    app[SETTINGS_KEY] = settings
    app[ROUTES_KEY] = table
    app[HOT_KEY] = hot
    return app
