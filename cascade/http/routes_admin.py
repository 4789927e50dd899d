"""Administration: the manual clock and snapshots.

`POST /v1/admin/clock` runs `Engine.advance` in a worker thread (it blocks
until every timer that falls due has fired, in deadline order) so the event
loop keeps serving; it is refused with 409 unless `clock.mode = "manual"`.
Snapshot endpoints call the `AdminHooks` given to `build_app`; without them
they answer 503 `snapshots_disabled`.
"""

from __future__ import annotations

import asyncio
from typing import Any, Awaitable, Protocol

from aiohttp import web

from ..config import Settings
from ..domain.timefmt import iso
from ..engine import Engine, ManualClock
from .auth import ADMIN
from .errors import ApiError, json_response
from .openapi import ClockView, Route
from .schemas import ClockAdvance, decode, decoder_for, read_body

__all__ = ["AdminHooks", "routes"]


class AdminHooks(Protocol):
    def snapshot(self) -> Awaitable[dict[str, Any]]: ...

    def list_snapshots(self) -> Awaitable[list[dict[str, Any]]]: ...


class ClusterHooks(Protocol):
    def cluster_view(self) -> Awaitable[dict[str, Any]]: ...


def routes(engine: Engine, settings: Settings, admin: AdminHooks | None,
           cluster: ClusterHooks | None = None) -> list[Route]:
    max_bytes = settings.server.max_body_bytes
    decoder = decoder_for(ClockAdvance)

    def clock_view() -> dict[str, Any]:
        return {"now": iso(engine.clock.now()), "mode": engine.clock.mode}

    async def get_clock(request: web.Request) -> web.Response:
        return json_response(clock_view())

    async def advance_clock(request: web.Request) -> web.Response:
        if not isinstance(engine.clock, ManualClock):
            raise ApiError(409, "clock_not_manual", f'the clock is {engine.clock.mode}; advancing it needs '
                           f'clock.mode = "manual" (cascade serve --clock manual)')
        body = decode(decoder, await read_body(request, max_bytes))
        await asyncio.get_running_loop().run_in_executor(None, engine.advance, body.advanceSeconds)
        return json_response(clock_view())

    def hooks() -> AdminHooks:
        if admin is None:
            raise ApiError(503, "snapshots_disabled", "snapshots are not available on this server "
                           "(no durable storage is configured)")
        return admin

    async def take_snapshot(request: web.Request) -> web.Response:
        return json_response(await hooks().snapshot())

    async def list_snapshots(request: web.Request) -> web.Response:
        return json_response({"snapshots": await hooks().list_snapshots()})

    async def cluster_view(request: web.Request) -> web.Response:
        if cluster is None:
            raise ApiError(404, "not_clustered", "this server runs alone: set [cluster] nats to join a cluster")
        return json_response(await cluster.cluster_view())

    return [
        Route("GET", "/v1/admin/clock", get_clock, ADMIN, "The engine's clock", response=ClockView),
        Route("POST", "/v1/admin/clock", advance_clock, ADMIN,
              'Move a manual clock forward, firing every timer that falls due in deadline order '
              '(409 unless clock.mode = "manual")', body=ClockAdvance, response=ClockView, errors=(409,)),
        Route("POST", "/v1/admin/snapshots", take_snapshot, ADMIN, "Write a snapshot now", errors=(503,)),
        Route("GET", "/v1/admin/snapshots", list_snapshots, ADMIN, "The snapshots on disk", errors=(503,)),
        Route("GET", "/v1/admin/cluster", cluster_view, ADMIN,
              "The cluster: nodes, partitions, owners, epochs, journal positions (404 when not in a cluster)",
              errors=(404, 503)),
    ]
