"""Templates: create/replace, read, list, delete, and their per-step metrics.

Owns the translation of a decoded `TemplateBody` into the plain dict the
engine validates: a field given as null counts as absent, so the engine's
rules (which speak of fields present or not) see what the user meant. The
engine keeps every domain rule and names the JSON path of each problem.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from ..config import Settings
from ..engine import Engine
from .auth import ADMIN, READ
from .errors import json_response
from .openapi import Route, TemplateList, TemplateMetrics, TemplateView
from .schemas import StepBody, TemplateBody, check_json, decode, decoder_for, read_body

__all__ = ["routes", "template_dict"]


def _step_dict(step: StepBody) -> dict[str, Any]:
    out: dict[str, Any] = {"channel": step.channel}
    if step.stopCondition is not None:
        out["stopCondition"] = step.stopCondition
    if step.waitMinutes is not None:
        out["waitMinutes"] = step.waitMinutes
    out["content"] = step.content
    return out


def template_dict(body: TemplateBody) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if body.name is not None:
        out["name"] = body.name
    out["channels"] = [_step_dict(s) for s in body.channels]
    config = body.config
    if config is not None:
        out["config"] = {"sequenceEnabled": config.sequenceEnabled}
        if config.quietHours is not None:
            q = config.quietHours
            out["config"]["quietHours"] = {"start": q.start, "end": q.end,
                                           **({} if q.channels is None else {"channels": q.channels})}
        if config.throttle is not None:
            out["config"]["throttle"] = {"limit": config.throttle.limit,
                                         "windowMinutes": config.throttle.windowMinutes}
        if config.order is not None:
            out["config"]["order"] = config.order
    return out


def routes(engine: Engine, settings: Settings) -> list[Route]:
    max_bytes = settings.server.max_body_bytes
    decoder = decoder_for(TemplateBody)

    async def put_template(request: web.Request) -> web.Response:
        body = decode(decoder, await read_body(request, max_bytes))
        check_json((s.content, f"$.channels[{i}].content") for i, s in enumerate(body.channels))
        version, created = await engine.put_template(request.match_info["id"], template_dict(body))
        return json_response(version.view(), 201 if created else 200)

    async def get_template(request: web.Request) -> web.Response:
        return json_response(engine.get_template(request.match_info["id"]).view())

    async def list_templates(request: web.Request) -> web.Response:
        return json_response({"templates": [tv.view() for tv in engine.list_templates()]})

    async def delete_template(request: web.Request) -> web.Response:
        version = await engine.delete_template(request.match_info["id"])
        return json_response(version.view())

    async def template_metrics(request: web.Request) -> web.Response:
        return json_response(await engine.template_metrics(request.match_info["id"]))

    path = "/v1/templates/{id}"
    return [
        Route("PUT", path, put_template, ADMIN, "Create (201) or replace (200, a new version) a template",
              body=TemplateBody, response=TemplateView, ok=201,
              also_ok=((200, "Replaced: the template's new version"),)),
        Route("GET", path, get_template, READ, "A template's current version", response=TemplateView,
              errors=(404,)),
        Route("GET", "/v1/templates", list_templates, READ, "Every template's current version",
              response=TemplateList),
        Route("DELETE", path, delete_template, ADMIN,
              "Delete a template: new sends are refused with 404, active ones finish", response=TemplateView,
              errors=(404,)),
        Route("GET", path + "/metrics", template_metrics, READ, "Per-step metrics of a template's sends",
              response=TemplateMetrics, errors=(404,)),
    ]
