"""CORS: web pages of the origins in `server.cors_origins` may call the
inbox endpoints and the stream, and nothing else; other origins get no
CORS headers, and a preflight of theirs is refused."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
from aiohttp.test_utils import TestClient

from cascade.config import Settings

APP = "https://app.example.com"
INBOX_PATHS = ("/v1/recipients/u-1/inbox", "/v1/recipients/u-1/inbox/snd_000000000000001.1/viewed",
               "/v1/recipients/u-1/inbox/stream")


def preflight(origin: str, method: str = "GET") -> dict[str, str]:
    return {"Origin": origin, "Access-Control-Request-Method": method,
            "Access-Control-Request-Headers": "authorization"}


@pytest.fixture
async def cors_client(make_client: Any) -> TestClient:
    client: TestClient = await make_client(msgspec.convert({
        "server": {"cors_origins": [APP, "http://localhost:3000"]},
        "auth": {"api_keys": {"k-admin": "admin"}, "inbox_secret": "s"}}, Settings))
    return client


@pytest.mark.parametrize("path", INBOX_PATHS)
async def test_a_preflight_from_a_listed_origin_is_answered_204_with_the_cors_headers(
        cors_client: TestClient, path: str) -> None:
    resp = await cors_client.options(path, headers=preflight(APP, "POST" if path.endswith("viewed") else "GET"))
    assert resp.status == 204
    assert resp.headers["Access-Control-Allow-Origin"] == APP
    assert resp.headers["Vary"] == "Origin"
    assert {"GET", "POST"} <= {m.strip() for m in resp.headers["Access-Control-Allow-Methods"].split(",")}
    allowed = {h.strip().lower() for h in resp.headers["Access-Control-Allow-Headers"].split(",")}
    assert {"authorization", "content-type", "x-recipient-token"} <= allowed
    assert int(resp.headers["Access-Control-Max-Age"]) > 0


async def test_a_preflight_from_an_unlisted_origin_is_refused_without_cors_headers(
        cors_client: TestClient, error_of: Any) -> None:
    resp = await cors_client.options("/v1/recipients/u-1/inbox", headers=preflight("https://evil.example"))
    assert resp.status == 403
    assert "Access-Control-Allow-Origin" not in resp.headers
    assert "server.cors_origins" in error_of(await resp.json(), "forbidden")["message"]


async def test_the_admin_api_answers_no_preflight_even_for_a_listed_origin(cors_client: TestClient) -> None:
    for path in ("/v1/templates/x", "/v1/sends", "/v1/admin/snapshots"):
        resp = await cors_client.options(path, headers=preflight(APP, "POST"))
        assert resp.status == 405, path
        assert "Access-Control-Allow-Origin" not in resp.headers
    resp = await cors_client.get("/v1/templates", headers={"Origin": APP, "Authorization": "Bearer k-admin"})
    assert resp.status == 200 and "Access-Control-Allow-Origin" not in resp.headers


async def test_inbox_answers_carry_the_origin_for_listed_origins_only_even_errors(cors_client: TestClient) -> None:
    auth = {"Authorization": "Bearer k-admin"}
    resp = await cors_client.get("/v1/recipients/u-1/inbox", headers={"Origin": APP, **auth})
    assert resp.status == 200
    assert resp.headers["Access-Control-Allow-Origin"] == APP and resp.headers["Vary"] == "Origin"
    resp = await cors_client.get("/v1/recipients/u-1/inbox", headers={"Origin": APP})
    assert resp.status == 401 and resp.headers["Access-Control-Allow-Origin"] == APP  # the page can read why
    resp = await cors_client.get("/v1/recipients/u-1/inbox", headers={"Origin": "https://evil.example", **auth})
    assert resp.status == 200 and "Access-Control-Allow-Origin" not in resp.headers
    assert resp.headers["Vary"] == "Origin"


async def test_the_stream_carries_the_cors_header(cors_client: TestClient) -> None:
    async with cors_client.get("/v1/recipients/u-1/inbox/stream",
                               headers={"Origin": "http://localhost:3000", "Authorization": "Bearer k-admin"}) as resp:
        assert resp.status == 200
        assert resp.headers["Access-Control-Allow-Origin"] == "http://localhost:3000"


async def test_without_cors_origins_nothing_is_cors_enabled(client: TestClient, error_of: Any) -> None:
    resp = await client.options("/v1/recipients/u-1/inbox", headers=preflight(APP))
    assert resp.status == 403 and "Access-Control-Allow-Origin" not in resp.headers  # refused as any unlisted origin
    assert "server.cors_origins" in error_of(await resp.json(), "forbidden")["message"]
    resp = await client.get("/v1/recipients/u-1/inbox", headers={"Origin": APP})
    assert resp.status == 200 and "Access-Control-Allow-Origin" not in resp.headers


@pytest.mark.parametrize("origin", ["https://app.example.com/", "app.example.com", "https://a.example.com/inbox", ""])
def test_an_origin_that_is_not_scheme_host_port_is_a_config_error_naming_the_key(tmp_path: Any, origin: str) -> None:
    from cascade.config import ConfigError, load_settings

    path = tmp_path / "cascade.toml"
    path.write_text(f'[server]\ncors_origins = ["{origin}"]\n', encoding="utf-8")
    with pytest.raises(ConfigError, match="server.cors_origins"):
        load_settings(path, environ={})
