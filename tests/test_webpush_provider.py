"""The `webpush` provider against a push service in the test process that
verifies VAPID and decrypts each payload with the subscription's own key;
and, through a real server, a subscription the push service calls gone
(410) dropped from the recipient, durably: still gone after a restart from
the snapshot and after one from the journal alone."""

from __future__ import annotations

import asyncio
import logging
import shutil
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import pytest
from pushservice import PushService, new_vapid_key

from cascade.config import Settings
from cascade.delivery.providers.base import OutgoingMessage
from cascade.delivery.providers.webpush import WebPushProvider
from cascade.server import Server

pytestmark = pytest.mark.timeout(30)
SUBJECT = "mailto:ops@example.com"
CONTENT = {"title": "Shipped", "body": "Order A1 is on its way", "url": "https://shop.example.com/o/A1"}


class Sleeps:
    """Stands in for asyncio.sleep between attempts: records the delays, waits for nothing."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)


class Gone:
    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[str, ...]]] = []

    async def __call__(self, rid: str, endpoints: tuple[str, ...]) -> None:
        self.calls.append((rid, endpoints))


@pytest.fixture
async def vapid() -> tuple[str, str]:
    return new_vapid_key()


@pytest.fixture
async def service(vapid: tuple[str, str]) -> AsyncIterator[PushService]:
    svc = await PushService(vapid[1], SUBJECT).start()
    yield svc
    await svc.close()


def message(subs: list[dict[str, Any]], content: Any = CONTENT) -> OutgoingMessage:
    return OutgoingMessage("snd_00000000000000a.2", "snd_00000000000000a", "order-shipped", 3, 2, "push",
                           {"id": "u-ann", "webPush": subs, "preferences": {}}, content)


def provider(vapid: tuple[str, str], **kwargs: Any) -> WebPushProvider:
    kwargs.setdefault("sleep", Sleeps())
    return WebPushProvider("push", vapid[0], SUBJECT, **kwargs)


async def test_every_subscription_gets_the_message_encrypted_for_it(vapid: tuple[str, str],
                                                                     service: PushService) -> None:
    subs = [service.subscribe("laptop"), service.subscribe("phone")]
    push = provider(vapid)
    outcome = await push.deliver(message(subs))
    await push.close()
    assert outcome.ok and outcome.attempts == 1
    assert service.problems == []
    want = {"messageId": "snd_00000000000000a.2", "sendId": "snd_00000000000000a", "template": "order-shipped",
            "templateVersion": 3, "step": 2, "content": CONTENT}
    assert service.received == {"laptop": [want], "phone": [want]}


async def test_a_raw_base64url_vapid_key_signs_as_well(service: PushService) -> None:
    from cryptography.hazmat.primitives.serialization import load_pem_private_key
    from pushservice import b64

    pem, public = new_vapid_key()
    key: Any = load_pem_private_key(pem.encode(), None)
    raw = b64(key.private_numbers().private_value.to_bytes(32, "big"))
    service.vapid_public = public
    push = WebPushProvider("push", raw, SUBJECT)
    assert push.signer.public_key == public
    assert (await push.deliver(message([service.subscribe("s")]))).ok
    await push.close()
    assert service.problems == [] and len(service.received["s"]) == 1


async def test_429_is_retried_and_then_accepted(vapid: tuple[str, str], service: PushService,
                                                caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="cascade.delivery.providers.webpush")
    sub = service.subscribe("s")
    service.answers["s"].extend([429])
    sleeps = Sleeps()
    push = provider(vapid, sleep=sleeps)
    outcome = await push.deliver(message([sub]))
    await push.close()
    assert outcome.ok and outcome.attempts == 2
    assert sleeps.delays == [0.0]  # the service's Retry-After: 0
    assert service.posts["s"] == 2 and len(service.received["s"]) == 1
    retried: Any = [r for r in caplog.records if getattr(r, "event", None) == "delivery_attempt_failed"]
    assert [(r.messageId, r.attempt, r.reason) for r in retried] == [
        ("snd_00000000000000a.2", 1, f"http_429 from {service.origin}")]


async def test_5xx_every_time_exhausts_the_attempts(vapid: tuple[str, str], service: PushService) -> None:
    sub = service.subscribe("s")
    service.answers["s"].extend([503, 503, 503])
    push = provider(vapid, max_attempts=3)
    outcome = await push.deliver(message([sub]))
    await push.close()
    assert not outcome.ok and outcome.attempts == 3
    assert outcome.reason == f"retries_exhausted: http_503 from {service.origin}"


async def test_another_4xx_fails_at_once(vapid: tuple[str, str], service: PushService) -> None:
    sub = service.subscribe("s")
    service.answers["s"].append(400)
    push = provider(vapid)
    outcome = await push.deliver(message([sub]))
    await push.close()
    assert not outcome.ok and outcome.attempts == 1 and outcome.reason == f"http_400 from {service.origin}"
    assert service.posts["s"] == 1


async def test_a_gone_subscription_is_reported_and_the_others_still_deliver(vapid: tuple[str, str],
                                                                             service: PushService) -> None:
    old, new = service.subscribe("old"), service.subscribe("new")
    service.answers["old"].append(410)
    gone = Gone()
    push = provider(vapid, on_gone=gone)
    outcome = await push.deliver(message([old, new]))
    await push.close()
    assert outcome.ok
    assert gone.calls == [("u-ann", (old["endpoint"],))]
    assert service.posts["old"] == 1 and len(service.received["new"]) == 1


async def test_all_subscriptions_gone_fails_the_step(vapid: tuple[str, str], service: PushService) -> None:
    a, b = service.subscribe("a"), service.subscribe("b")
    service.answers["a"].append(404)
    service.answers["b"].append(410)
    gone = Gone()
    push = provider(vapid, on_gone=gone)
    outcome = await push.deliver(message([a, b]))
    await push.close()
    assert not outcome.ok and outcome.reason == "subscriptions_gone: 2 removed"
    assert gone.calls == [("u-ann", (a["endpoint"], b["endpoint"]))]


async def test_no_subscription_and_a_payload_too_large_fail_without_a_post(vapid: tuple[str, str],
                                                                            service: PushService) -> None:
    push = provider(vapid)
    none = await push.deliver(message([]))
    big = await push.deliver(message([service.subscribe("s")], {"body": "x" * 4000}))
    await push.close()
    assert not none.ok and none.attempts == 0 and (none.reason or "").startswith("no_address")
    assert not big.ok and (big.reason or "").startswith("payload_too_large")
    assert service.posts["s"] == 0


def test_an_unreadable_vapid_key_is_refused_naming_the_key() -> None:
    with pytest.raises(ValueError, match="vapid_private_key"):
        WebPushProvider("push", "not-a-key", SUBJECT)
    with pytest.raises(ValueError, match="vapid_subject"):
        WebPushProvider("push", new_vapid_key()[0], "ops@example.com")


# -- through a server: the drop is journaled -----------------------------------------------------

TEMPLATE = {"channels": [{"channel": "push", "content": {"title": "Shipped", "body": "Order {{order.id}}"}}]}


def settings_for(data_dir: Path, vapid_pem: str) -> Settings:
    return msgspec.convert({
        "server": {"port": 0},
        "storage": {"data_dir": str(data_dir), "snapshot_interval_s": 0},
        "engine": {"shed_lag_s": 0.0},  # a busy test machine's loop lag must not shed these few sends
        "channels": {"push": {"provider": "webpush", "vapid_private_key": vapid_pem, "vapid_subject": SUBJECT,
                              "max_attempts": 2}},
    }, Settings)


async def call(http: aiohttp.ClientSession, method: str, path: str, body: Any = None) -> Any:
    async with http.request(method, path, json=body) as resp:
        assert resp.status in (200, 201, 202), f"{method} {path}: {resp.status} {await resp.text()}"
        return await resp.json()


async def eventually(http: aiohttp.ClientSession, path: str, check: Any, timeout: float = 10.0) -> Any:
    """GET `path` until `check(body)` holds (polled, with a deadline); the body that met it."""
    deadline = time.monotonic() + timeout
    while True:
        body = await call(http, "GET", path)
        if check(body):
            return body
        assert time.monotonic() < deadline, f"GET {path} never met the condition: {body}"
        await asyncio.sleep(0.02)


async def test_a_subscription_answered_410_is_dropped_from_the_recipient_durably(
        tmp_path: Path, vapid: tuple[str, str], service: PushService) -> None:
    old, new = service.subscribe("old"), service.subscribe("new")
    service.answers["old"].append(410)
    settings = settings_for(tmp_path / "data", vapid[0])
    server = Server(settings)
    await server.start()
    try:
        async with aiohttp.ClientSession(server.url) as http:
            await call(http, "PUT", "/v1/templates/shipped", TEMPLATE)
            await call(http, "PUT", "/v1/recipients/u1", {"webPush": [old, new], "timezone": "Europe/Berlin"})
            send = await call(http, "POST", "/v1/sends", {"template": "shipped", "recipient": "u1",
                                                          "data": {"order": {"id": "A1"}}})
            rcpt = await eventually(http, "/v1/recipients/u1", lambda r: r.get("webPush") != [old, new])
            assert rcpt["webPush"] == [new] and rcpt["timezone"] == "Europe/Berlin"
            assert service.received["new"][0]["content"] == {"title": "Shipped", "body": "Order A1"}
            view = await call(http, "GET", f"/v1/sends/{send['id']}")
            assert view["steps"][0]["status"] == "fired" and view["status"] == "completed", view
        shutil.copytree(tmp_path / "data", tmp_path / "crashed")  # as kill -9 leaves it: the journal alone
    finally:
        await server.stop()  # writes a final snapshot
    for data_dir in ("data", "crashed"):
        again = Server(settings_for(tmp_path / data_dir, vapid[0]))
        await again.start()
        try:
            async with aiohttp.ClientSession(again.url) as http:
                assert (await call(http, "GET", "/v1/recipients/u1"))["webPush"] == [new], data_dir
        finally:
            await again.stop()
    assert service.posts["old"] == 1  # gone means gone: never posted again, not even on re-drive
    assert service.problems == []


async def test_when_every_subscription_is_gone_the_step_fails_and_the_list_empties(
        tmp_path: Path, vapid: tuple[str, str], service: PushService) -> None:
    only = service.subscribe("only")
    service.answers["only"].append(410)
    async with Server(settings_for(tmp_path / "data", vapid[0])) as server, aiohttp.ClientSession(server.url) as http:
        await call(http, "PUT", "/v1/templates/shipped", TEMPLATE)
        await call(http, "PUT", "/v1/recipients/u1", {"webPush": [only]})
        send = await call(http, "POST", "/v1/sends", {"template": "shipped", "recipient": "u1",
                                                      "data": {"order": {"id": "A1"}}})
        view = await eventually(http, f"/v1/sends/{send['id']}", lambda v: v["steps"][0]["status"] == "failed")
        assert view["steps"][0]["reason"] == "subscriptions_gone: 1 removed", view
        assert view["status"] == "failed"  # rule 6: nothing reached a provider
        assert "webPush" not in await call(http, "GET", "/v1/recipients/u1")
        # The next send finds no address at all: skipped before any provider is asked (rule 5).
        send = await call(http, "POST", "/v1/sends", {"template": "shipped", "recipient": "u1",
                                                      "data": {"order": {"id": "A2"}}})
        view = await call(http, "GET", f"/v1/sends/{send['id']}")
        assert view["steps"][0]["status"] == "skipped" and view["steps"][0]["reason"] == "no_address"
