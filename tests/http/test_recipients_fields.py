"""Recipients' `webPush` subscriptions and `timezone` through the API:
validated with messages that name the field, read back as written, upserted
by inline recipients of a send, and kept across a restart (from the
snapshot and from the journal alone)."""

from __future__ import annotations

import base64
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import pytest
from aiohttp.test_utils import TestClient
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cascade.config import Settings
from cascade.engine import Engine, EngineConfig, ManualClock, MemoryProvider
from cascade.server import Server


@pytest.fixture
def engine(providers: dict[str, MemoryProvider], start: float) -> Iterator[Engine]:
    """The conftest's engine without shedding: a busy machine's loop lag must
    not turn these answers into 503s (what is judged here is validation)."""
    e = Engine(ManualClock(start), providers, EngineConfig(shards=2, shed_lag_s=0.0))
    e.start()
    yield e
    e.stop()


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def subscription(endpoint: str = "https://push.example.net/s/1") -> dict[str, Any]:
    public = ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    return {"endpoint": endpoint, "keys": {"p256dh": b64(public), "auth": b64(os.urandom(16))}}


async def put(client: TestClient | aiohttp.ClientSession, rid: str, body: dict[str, Any]) -> tuple[int, Any]:
    async with client.put(f"/v1/recipients/{rid}", json=body) as resp:
        return resp.status, await resp.json()


async def get(client: TestClient | aiohttp.ClientSession, rid: str) -> Any:
    async with client.get(f"/v1/recipients/{rid}") as resp:
        assert resp.status == 200, await resp.text()
        return await resp.json()


async def test_web_push_and_timezone_are_read_back_as_written(client: TestClient) -> None:
    subs = [subscription(), subscription("https://fcm.example.com/wp/2")]
    status, view = await put(client, "u1", {"email": "u1@example.com", "webPush": subs, "timezone": "Europe/Berlin"})
    assert status == 200
    assert view == {"id": "u1", "email": "u1@example.com", "webPush": subs, "timezone": "Europe/Berlin",
                    "preferences": {}}
    assert await get(client, "u1") == view


async def test_a_browser_subscription_json_with_expiration_time_is_taken_as_it_is(client: TestClient) -> None:
    sub = subscription()
    status, view = await put(client, "u1", {"webPush": [{**sub, "expirationTime": None}]})
    assert status == 200 and view["webPush"] == [sub]


async def test_put_without_the_fields_clears_them_and_absent_timezone_means_utc(client: TestClient) -> None:
    await put(client, "u1", {"webPush": [subscription()], "timezone": "Asia/Tokyo"})
    status, view = await put(client, "u1", {"email": "a@example.com"})
    assert status == 200 and view == {"id": "u1", "email": "a@example.com", "preferences": {}}


async def test_an_unknown_time_zone_is_a_422_naming_it(client: TestClient) -> None:
    for bad in ("Mars/Olympus_Mons", "../../etc/passwd", "Europe", ""):
        status, body = await put(client, "u1", {"timezone": bad})
        assert status == 422, (bad, body)
        details = body["error"]["details"]
        assert details[0]["path"] == "$.timezone" and repr(bad) in details[0]["message"], body
        assert repr(bad) in body["error"]["message"]


async def test_a_timezone_that_is_not_a_string_is_a_422(client: TestClient) -> None:
    status, body = await put(client, "u1", {"timezone": 5})
    assert status == 422 and body["error"]["details"][0]["path"] == "$.timezone"


async def test_bad_subscriptions_are_422_naming_the_field(client: TestClient) -> None:
    good = subscription()
    cases = [
        ({**good, "endpoint": "http://push.example.net/s/1"}, "$.webPush[0].endpoint"),
        ({**good, "endpoint": "ftp://push.example.net/s/1"}, "$.webPush[0].endpoint"),
        ({**good, "endpoint": "not a url"}, "$.webPush[0].endpoint"),
        ({**good, "keys": {"p256dh": b64(b"\x04" + b"x" * 10), "auth": good["keys"]["auth"]}},
         "$.webPush[0].keys.p256dh"),
        ({**good, "keys": {"p256dh": good["keys"]["p256dh"], "auth": "!!notbase64!!"}}, "$.webPush[0].keys.auth"),
        ({"endpoint": good["endpoint"]}, "$.webPush[0].keys"),
        ({**good, "extra": 1}, "$.webPush[0].extra"),
    ]
    for sub, path in cases:
        status, body = await put(client, "u1", {"webPush": [sub]})
        assert status == 422, (sub, body)
        assert path in [d["path"] for d in body["error"]["details"]], (path, body)


async def test_a_repeated_endpoint_and_too_many_subscriptions_are_refused(client: TestClient) -> None:
    sub = subscription()
    status, body = await put(client, "u1", {"webPush": [sub, sub]})
    assert status == 422 and body["error"]["details"][0]["path"] == "$.webPush[1].endpoint"
    many = [subscription(f"https://push.example.net/s/{i}") for i in range(21)]
    status, body = await put(client, "u1", {"webPush": many})
    assert status == 422 and "at most 20" in body["error"]["message"]


async def test_http_endpoints_on_loopback_are_allowed_for_local_push_services(client: TestClient) -> None:
    sub = subscription("http://127.0.0.1:9999/push/1")
    status, view = await put(client, "u1", {"webPush": [sub]})
    assert status == 200 and view["webPush"] == [sub]


async def test_an_inline_recipient_of_a_send_upserts_the_new_fields(client: TestClient) -> None:
    resp = await client.put("/v1/templates/t1", json={"channels": [{"channel": "inapp", "content": {"t": "x"}}]})
    assert resp.status in (200, 201)
    sub = subscription()
    resp = await client.post("/v1/sends", json={"template": "t1", "recipient": {
        "id": "u9", "webPush": [sub], "timezone": "America/New_York"}})
    assert resp.status == 202, await resp.text()
    assert await get(client, "u9") == {"id": "u9", "webPush": [sub], "timezone": "America/New_York",
                                       "preferences": {}}
    resp = await client.post("/v1/sends", json={"template": "t1", "recipient": {"id": "u9", "timezone": "Nowhere/X"}})
    assert resp.status == 422
    assert (await resp.json())["error"]["details"][0]["path"] == "$.recipient.timezone"


async def test_the_fields_survive_a_restart_from_the_snapshot_and_from_the_journal(tmp_path: Path) -> None:
    settings = msgspec.convert({"server": {"port": 0}, "engine": {"shed_lag_s": 0.0},
                                "storage": {"data_dir": str(tmp_path / "data"), "snapshot_interval_s": 0}}, Settings)
    sub = subscription()
    want = {"id": "u1", "webPush": [sub], "timezone": "Europe/Berlin", "preferences": {}}
    server = Server(settings)
    await server.start()
    try:
        async with aiohttp.ClientSession(server.url) as http:
            assert (await put(http, "u1", {"webPush": [sub], "timezone": "Europe/Berlin"}))[0] == 200
        shutil.copytree(tmp_path / "data", tmp_path / "crashed")  # as kill -9 leaves it: journal only
    finally:
        await server.stop()  # writes a final snapshot
    for data_dir in ("data", "crashed"):
        again = Server(msgspec.structs.replace(settings, storage=msgspec.structs.replace(
            settings.storage, data_dir=str(tmp_path / data_dir))))
        await again.start()
        try:
            async with aiohttp.ClientSession(again.url) as http:
                assert await get(http, "u1") == want, data_dir
        finally:
            await again.stop()


_scalars = (st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30)
            | st.sampled_from(["https://push.example.net/s/1", "http://127.0.0.1:1/x", "http://[::1", "UTC",
                               "Europe/Berlin", "../etc/passwd", "\x00", ".", "Europe", "A" * 70]))
_json = st.recursive(_scalars, lambda inner: st.lists(inner, max_size=4)
                     | st.dictionaries(st.text(max_size=10), inner, max_size=4), max_leaves=20)
_keys = st.fixed_dictionaries({}, optional={"p256dh": _json | st.just(subscription()["keys"]["p256dh"]),
                                            "auth": _json | st.just(subscription()["keys"]["auth"])})
_subs = st.lists(st.fixed_dictionaries({}, optional={"endpoint": _json, "keys": _keys | _json,
                                                     "expirationTime": _json}) | _json, max_size=3)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(web_push=_subs | _json, timezone=_json)
async def test_any_web_push_or_timezone_value_is_200_or_a_4xx_error_body(
        client: TestClient, error_of: Any, web_push: Any, timezone: Any) -> None:
    for path, body in (("/v1/recipients/u1", {"webPush": web_push, "timezone": timezone}),
                       ("/v1/sends", {"template": "none", "recipient": {"id": "u1", "webPush": web_push,
                                                                         "timezone": timezone}})):
        resp = await (client.put(path, json=body) if path.startswith("/v1/recipients") else
                      client.post(path, json=body))
        assert resp.status < 500, await resp.text()
        if resp.status >= 400:
            error_of(await resp.json())


async def test_a_p256dh_that_is_not_a_curve_point_and_files_that_are_not_zones_are_refused(client: TestClient,
                                                                                           error_of: Any) -> None:
    not_a_point = base64.urlsafe_b64encode(b"\x04" + bytes(64)).rstrip(b"=").decode()
    auth = base64.urlsafe_b64encode(bytes(16)).rstrip(b"=").decode()
    resp = await client.put("/v1/recipients/wp", json={"webPush": [
        {"endpoint": "https://push.example.com/x", "keys": {"p256dh": not_a_point, "auth": auth}}]})
    assert resp.status == 422
    assert [d["path"] for d in error_of(await resp.json())["details"]] == ["$.webPush[0].keys.p256dh"]
    for name in ("localtime", "posixrules", "Factory", "right/UTC", "posix/UTC"):
        resp = await client.put("/v1/recipients/tz", json={"timezone": name})
        assert resp.status == 422, name
