"""`GET /v1/stats/series`: per-interval counts for the dashboard's charts.

Owns the query's validation (422 naming the parameter) and the response
type; the counting is the engine's series sampler (engine/series*.py).
The read is blocking (it asks every shard), so it runs off the event loop.
"""

from __future__ import annotations

import asyncio
from typing import Any, Awaitable, Protocol

import msgspec
from aiohttp import web

from ..engine.series import MAX_MINUTES
from ..engine.series_sampler import SeriesSampler


class GatheredSeries(Protocol):
    """A cluster's series: every partition's, gathered (cluster/front.py)."""

    def view(self, minutes: int, step: int) -> Awaitable[dict[str, Any]]: ...
from .auth import READ
from .errors import ApiError, json_response
from .openapi import Route

__all__ = ["MAX_STEP_S", "SeriesPoint", "SeriesView", "routes"]

MAX_STEP_S = 86_400


class _View(msgspec.Struct, kw_only=True):
    """The response's shape, for the OpenAPI document and tests (the handler answers the engine's dict)."""


class ChannelCounts(_View, kw_only=True):
    requested: int
    delivered: int
    viewed: int | None  # null: the channel emits no viewed signal
    clicked: int
    engaged: int  # viewed + clicked
    failed: int


class SendsFinished(_View, kw_only=True):
    stopped: int
    completed: int
    cancelled: int
    failed: int
    throttled: int


class TimerLateness(_View, kw_only=True):
    fired: int  # wait-window timers that fired in the interval
    p50: float | None  # seconds (a bucket's upper bound); null when none fired
    p99: float | None


class SeriesPoint(_View, kw_only=True):
    at: str  # the interval's start
    sendsStarted: int
    sendsFinished: SendsFinished
    channels: dict[str, ChannelCounts]
    timerLateness: TimerLateness


class SeriesView(_View, kw_only=True):
    step: int
    # `from` is a keyword in Python: the field is renamed on the wire
    from_: str = msgspec.field(name="from")
    to: str
    points: list[SeriesPoint]


def _integer(name: str, text: str | None, default: int, low: int, high: int, rule: str) -> int:
    if text is None:
        return default
    n = int(text) if text.isascii() and text.isdigit() and len(text) <= 6 else -1
    if not low <= n <= high:
        raise ApiError(422, "invalid", f"{name} {text!r} must be {rule}", [(name, rule)])
    return n


def routes(series: SeriesSampler | GatheredSeries) -> list[Route]:
    """`series`: a single server's sampler, or a cluster's gathered view (an async `view`)."""
    async def get_series(request: web.Request) -> web.Response:
        query = request.query
        for name in query:  # as GET /v1/sends: a misspelt parameter is not silently ignored
            if name not in ("minutes", "step") or len(query.getall(name)) > 1:
                why = "given twice" if name in ("minutes", "step") else "not a parameter of this view"
                raise ApiError(422, "invalid", f"query parameter {name!r}: {why}; allowed: minutes, step once each",
                               [(name, why)])
        minutes = _integer("minutes", query.get("minutes"), 60, 1, MAX_MINUTES,
                           f"an integer from 1 to {MAX_MINUTES}")
        step_rule = f"a whole number of minutes in seconds: 60, 120, ... up to {MAX_STEP_S}"
        step = _integer("step", query.get("step"), 60, 60, MAX_STEP_S, step_rule)
        if step % 60:
            raise ApiError(422, "invalid", f"step {query.get('step')!r} must be {step_rule}", [("step", step_rule)])
        if isinstance(series, SeriesSampler):  # reads the shards and waits: off the loop
            view = await asyncio.get_running_loop().run_in_executor(None, series.view, minutes, step)
        else:
            view = await series.view(minutes, step)
        return json_response(view)

    return [
        Route("GET", "/v1/stats/series", get_series, READ,
              "Per-interval counts of the last `minutes`: sends started and finished by outcome, per channel "
              "requested, delivered, viewed, clicked, engaged and failed, timer lateness p50/p99",
              response=SeriesView, errors=(422,),
              query=(("minutes", "how far back, in minutes (kept: 24 hours)",
                      {"type": "integer", "minimum": 1, "maximum": MAX_MINUTES, "default": 60}),
                     ("step", "seconds an interval, a multiple of 60",
                      {"type": "integer", "minimum": 60, "maximum": MAX_STEP_S, "multipleOf": 60, "default": 60}))),
    ]
