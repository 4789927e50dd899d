"""End to end: the real `cascade serve` process, a webhook provider pointed
at a local test server, and the API.md example played over HTTP — in-app
first, then push once 30 minutes of manual clock have passed without a view.
Then SIGTERM, and a clean exit."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from serverproc import ORDER_SHIPPED, eventually, free_port

ROOT = Path(__file__).resolve().parent.parent
SECRET = "whsec-e2e"
ADMIN = {"Authorization": "Bearer k-admin"}

pytestmark = [pytest.mark.slow, pytest.mark.timeout(60)]



class Webhook:
    """The user's push endpoint: records what arrives, checks the signature."""

    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        sig = dict(p.split("=", 1) for p in request.headers.get("X-Cascade-Signature", "").split(",") if "=" in p)
        want = hmac.new(SECRET.encode(), sig.get("t", "").encode() + b"." + body, hashlib.sha256).hexdigest()
        self.received.append({
            "headers": dict(request.headers), "json": json.loads(body),
            "signature_ok": hmac.compare_digest(sig.get("sha256", ""), want),
        })
        return web.json_response({"ok": True})


@pytest.fixture
async def webhook() -> AsyncIterator[tuple[Webhook, str]]:
    hook = Webhook()
    app = web.Application()
    app.router.add_post("/push", hook.handle)
    server = TestServer(app, host="127.0.0.1", port=free_port())
    await server.start_server()
    try:
        yield hook, str(server.make_url("/push"))
    finally:
        await server.close()


class Serve:
    """`cascade serve` as a child process, its log in a file."""

    def __init__(self, tmp_path: Path, config: str) -> None:
        cfg = tmp_path / "cascade.toml"
        cfg.write_text(config, encoding="utf-8")
        env = {k: v for k, v in os.environ.items() if not k.startswith("CASCADE_")}
        env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
        env["CASCADE_LOG_LEVEL"] = "INFO"
        self.log_path = tmp_path / "serve.log"
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "cascade.cli", "serve", "--config", str(cfg)],
                                         cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT)

    def log_lines(self) -> list[dict[str, Any]]:
        lines = []
        for raw in self.log_path.read_text(encoding="utf-8").splitlines():
            try:
                lines.append(json.loads(raw))
            except ValueError:
                lines.append({"raw": raw})
        return lines

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


async def test_cascade_serve_plays_the_api_md_example_with_a_webhook_push(
        tmp_path: Path, webhook: tuple[Webhook, str]) -> None:
    hook, hook_url = webhook
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    serve = Serve(tmp_path, f"""
[server]
host = "127.0.0.1"
port = {port}
shutdown_timeout_s = 10

[storage]
data_dir = "{tmp_path / 'data'}"

[auth]
api_keys = {{ "k-admin" = "admin" }}

[clock]
mode = "manual"

[channels.push]
provider = "webhook"
url = "{hook_url}"
secret = "{SECRET}"
max_attempts = 3
""")
    try:
        async with aiohttp.ClientSession(base, headers=ADMIN) as http:
            async def ready() -> bool:
                assert serve.proc.poll() is None, serve.log_path.read_text()
                try:
                    async with http.get("/readyz") as r:
                        return r.status == 200
                except aiohttp.ClientConnectionError:
                    return False

            await eventually(ready, "/readyz", timeout=20)

            async with http.put("/v1/templates/order-shipped", json=ORDER_SHIPPED) as r:
                assert r.status == 201, await r.text()
                assert (await r.json())["version"] == 1
            async with http.put("/v1/recipients/u-42", json={"pushTokens": ["tok-1"]}) as r:
                assert r.status == 200, await r.text()
            order = {"template": "order-shipped", "recipient": "u-42", "data": {"order": {"id": "A1"}},
                     "idempotencyKey": "order-A1-shipped"}
            async with http.post("/v1/sends", json=order) as r:
                assert r.status == 202, await r.text()
                send = await r.json()
            sid = send["id"]
            assert send["status"] == "active"
            assert [s["status"] for s in send["steps"]] == ["waiting", "pending"]
            async with http.post("/v1/sends", json=order) as r:  # same key, same body: the same send
                assert r.status == 200 and (await r.json())["id"] == sid

            async with http.get("/v1/recipients/u-42/inbox") as r:
                assert r.status == 200, await r.text()
                inbox = await r.json()
            [message] = inbox["messages"]
            assert message["messageId"] == f"{sid}.1"
            assert message["content"] == {"title": "Shipped", "body": "Order A1 is on its way"}

            async with http.post("/v1/admin/clock", json={"advanceSeconds": 1800}) as r:
                assert r.status == 200, await r.text()

            async def pushed() -> bool:
                return bool(hook.received)

            await eventually(pushed, "the push webhook")
            [push] = hook.received
            assert push["signature_ok"], push["headers"]
            assert push["headers"]["Idempotency-Key"] == f"{sid}.2"
            body = push["json"]
            assert {k: body[k] for k in ("messageId", "sendId", "template", "templateVersion", "step", "channel")} == {
                "messageId": f"{sid}.2", "sendId": sid, "template": "order-shipped", "templateVersion": 1,
                "step": 2, "channel": "push"}
            assert body["recipient"]["id"] == "u-42" and body["recipient"]["pushTokens"] == ["tok-1"]
            assert body["content"] == {"title": "Shipped", "body": "Order A1"}

            async def completed() -> dict[str, Any] | None:
                async with http.get(f"/v1/sends/{sid}") as r:
                    assert r.status == 200, await r.text()
                    view: dict[str, Any] = await r.json()
                return view if view["status"] == "completed" else None

            view = await eventually(completed, "the send to complete once the webhook answered")
            step1, step2 = view["steps"]
            assert (step1["status"], step2["status"]) == ("fired", "fired")
            assert step1["signals"]["delivered"] is not None and step1["signals"]["viewed"] is None
            assert step2["firedAt"] is not None and view["finishedAt"] is not None

            async with http.get("/metrics") as r:
                assert r.status == 200
                metrics = await r.text()
            for line in (
                'cascade_sends_started_total{template="order-shipped"} 1.0',
                'cascade_sends_finished_total{outcome="completed",template="order-shipped"} 1.0',
                'cascade_step_signals_total{channel="inapp",signal="delivered",step="1",template="order-shipped"} 1.0',
                'cascade_step_signals_total{channel="inapp",signal="escalated",step="1",template="order-shipped"} 1.0',
                'cascade_step_signals_total{channel="push",signal="requested",step="2",template="order-shipped"} 1.0',
                'cascade_delivery_attempts_total{channel="push",outcome="ok",provider="webhook"} 1.0',
                'cascade_timer_lateness_seconds_count 1.0',
                'cascade_active_sends 0.0',
            ):
                assert line in metrics, line
            assert 'cascade_http_request_duration_seconds_count{method="POST",route="/v1/sends",status="202"} 1.0' \
                in metrics

        serve.proc.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(serve.proc.wait, 20)
        assert code == 0, serve.log_path.read_text()
        events = [line.get("event") for line in serve.log_lines()]
        assert "start" in events and "ready" in events
        assert events[-1] == "stopped", serve.log_path.read_text()
        assert serve.log_lines()[-1]["clean"] is True
        assert not [line for line in serve.log_lines() if line.get("level") == "error"]
    finally:
        serve.kill()


async def test_cascade_serve_refuses_a_public_address_without_api_keys(tmp_path: Path) -> None:
    serve = Serve(tmp_path, f'[server]\nhost = "0.0.0.0"\nport = {free_port()}\n')
    try:
        code = await asyncio.to_thread(serve.proc.wait, 30)
        assert code == 2
        [line] = serve.log_lines()
        assert line["level"] == "error" and "server.host" in line["msg"] and "api_keys" in line["msg"]
    finally:
        serve.kill()
