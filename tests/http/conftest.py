"""Fixtures for the HTTP tests: an engine on a manual clock with in-memory
providers, served by `build_app` through aiohttp's test client.

Helpers reach tests as fixtures, not imports: `tests/http` cannot be a
package (it would be named `http` and shadow the standard library)."""

from __future__ import annotations

import json
from typing import Any, AsyncIterator, Awaitable, Callable, Iterator

import msgspec
import pytest
from aiohttp.test_utils import TestClient

from cascade.campaigns import Campaigns, attach_campaigns
from cascade.campaigns.desk import LocalDesk
from cascade.config import Settings
from cascade.domain.timefmt import parse_iso
from cascade.engine import Engine, EngineConfig, ManualClock, MemoryProvider
from cascade.http import build_app

START = parse_iso("2026-11-27T10:00:00.000Z")

SHIPPED = {
    "name": "Order shipped",
    "channels": [
        {"channel": "inapp", "stopCondition": "viewed", "waitMinutes": 30,
         "content": {"title": "Shipped", "body": "Order {{order.id}} is on its way"}},
        {"channel": "push", "content": {"title": "Shipped", "body": "Order {{order.id}}"}},
    ],
    "config": {"sequenceEnabled": True},
}

MakeClient = Callable[..., Awaitable[TestClient]]


def make_settings(**sections: Any) -> Settings:
    return msgspec.convert(sections, Settings)


@pytest.fixture
def providers() -> dict[str, MemoryProvider]:
    return {ch: MemoryProvider(ch) for ch in ("push", "email", "sms")}


@pytest.fixture
def engine(providers: dict[str, MemoryProvider]) -> Iterator[Engine]:
    """Without shedding on loop lag: a busy machine's lag must not turn answers into 503s (test_fuzz.py
    failed 1 run in ~50 that way); the shedding tests make the engine behind themselves."""
    e = Engine(ManualClock(START), providers, EngineConfig(shards=2, shed_lag_s=0.0))
    attach_campaigns(e)
    e.start()
    yield e
    e.stop()


def campaigns_of(engine: Engine) -> LocalDesk | None:
    """The campaign routes' desk over the engine's campaigns, when it has them."""
    campaigns = next((e for e in engine.extensions if isinstance(e, Campaigns)), None)
    return LocalDesk(engine, campaigns.book) if campaigns is not None else None


@pytest.fixture
async def make_client(aiohttp_client: Any, engine: Engine) -> MakeClient:
    """A client over `engine` (or another engine) with the given settings."""

    async def make(settings: Settings | None = None, *, on: Engine | None = None, **kwargs: Any) -> TestClient:
        target = on or engine
        kwargs.setdefault("campaigns", campaigns_of(target))
        return await aiohttp_client(build_app(target, settings or Settings(), **kwargs))

    return make


@pytest.fixture
async def client(make_client: MakeClient) -> AsyncIterator[TestClient]:
    yield await make_client()


async def put_shipped(client: TestClient, template_id: str = "order-shipped") -> dict[str, Any]:
    resp = await client.put(f"/v1/templates/{template_id}", json=SHIPPED)
    assert resp.status in (200, 201), await resp.text()
    body: dict[str, Any] = await resp.json()
    return body


def assert_error(body: Any, code: str | None = None) -> dict[str, Any]:
    """The error body shape of API.md, whatever the status."""
    assert isinstance(body, dict) and set(body) == {"error"}, body
    err = body["error"]
    assert set(err) == {"code", "message", "details"}, err
    assert isinstance(err["code"], str) and isinstance(err["message"], str) and err["message"]
    assert isinstance(err["details"], list)
    for d in err["details"]:
        assert set(d) == {"path", "message"} and isinstance(d["path"], str) and isinstance(d["message"], str)
    if code is not None:
        assert err["code"] == code, err
    return err  # type: ignore[no-any-return]


@pytest.fixture
def shipped() -> dict[str, Any]:
    """The API.md example template (a fresh copy)."""
    return json.loads(json.dumps(SHIPPED))


@pytest.fixture
def start() -> float:
    return START


@pytest.fixture(name="put_shipped")
def _put_shipped(client: TestClient) -> Callable[..., Awaitable[dict[str, Any]]]:
    return lambda template_id="order-shipped", on=None: put_shipped(on or client, template_id)


@pytest.fixture(name="error_of")
def _error_of() -> Callable[..., dict[str, Any]]:
    return assert_error


@pytest.fixture(name="settings_of")
def _settings_of() -> Callable[..., Settings]:
    return make_settings
