"""Helpers for tests that run the real `cascade serve` process: a config
writer, the child process (started, awaited, SIGKILLed or SIGTERMed by its
own pid only), a webhook sink that records every POST, and a bounded poll.

Imported by test modules (tests/ is on sys.path under pytest's default
import mode); not a test module itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from cascade.config import load_settings
from cascade.server import Server

ROOT = Path(__file__).resolve().parent.parent
ADMIN_KEY = "k-admin"
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
# The contract's example: in-app, then push after 30 minutes without a view.
ORDER_SHIPPED = {
    "name": "Order shipped",
    "channels": [
        {"channel": "inapp", "stopCondition": "viewed", "waitMinutes": 30,
         "content": {"title": "Shipped", "body": "Order {{order.id}} is on its way"}},
        {"channel": "push", "content": {"title": "Shipped", "body": "Order {{order.id}}"}},
    ],
    "config": {"sequenceEnabled": True},
}


def spawn_serve(cfg: Path, cwd: Path, log_path: Path, log_format: str | None = None) -> subprocess.Popen[bytes]:
    """`cascade serve --config cfg` from this checkout, its output to `log_path`; no CASCADE_* of ours leaks in."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CASCADE_")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["CASCADE_LOG_LEVEL"] = "INFO"
    if log_format is not None:
        env["CASCADE_LOG_FORMAT"] = log_format
    with open(log_path, "wb") as log:
        return subprocess.Popen([sys.executable, "-m", "cascade.cli", "serve", "--config", str(cfg)],
                                cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def eventually(check: Callable[[], Awaitable[Any]], what: str, timeout: float = 10.0,
                     interval: float = 0.02) -> Any:
    """Poll `check` until it returns something truthy; AssertionError after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        result = await check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(interval)


# -- a workload ------------------------------------------------------------------------

def template(name: str, first: str, first_stop: str, wait: int, second: str) -> dict[str, Any]:
    return {"name": name, "config": {"sequenceEnabled": True}, "channels": [
        {"channel": first, "stopCondition": first_stop, "waitMinutes": wait,
         "content": {"title": "T", "body": "Order {{order.id}} for {{recipient.id}}"}},
        {"channel": second, "content": {"title": "T", "body": "Order {{order.id}}"}},
    ]}


# seq-a: in-app first, push if not viewed within 5 minutes. seq-b: push first, in-app if not clicked in 10.
TEMPLATES = {
    "seq-a": lambda n: template(f"A v{n}", "inapp", "viewed", 5, "push"),
    "seq-b": lambda n: template(f"B v{n}", "push", "clicked", 10, "inapp"),
}


async def api(http: aiohttp.ClientSession, method: str, path: str, body: Any = None,
              ok: tuple[int, ...] = (200, 201, 202)) -> Any:
    async with http.request(method, path, json=body) as r:
        text = await r.text()
        assert r.status in ok, f"{method} {path}: HTTP {r.status} {text[:500]}"
        return await r.json() if text else None


async def small_workload(http: aiohttp.ClientSession, tag: str, n: int = 12) -> list[str]:
    """Templates, recipients, sends and events; answers the send ids."""
    for tid, make in TEMPLATES.items():
        await api(http, "PUT", f"/v1/templates/{tid}", make(0))
    ids = []
    for i in range(n):
        rid = f"{tag}-u{i % 4}"
        await api(http, "PUT", f"/v1/recipients/{rid}", {"pushTokens": [f"tok-{rid}"]})
        view = await api(http, "POST", "/v1/sends", {"template": sorted(TEMPLATES)[i % 2], "recipient": rid,
                                                     "data": {"order": {"id": f"{tag}{i}"}},
                                                     "idempotencyKey": f"{tag}-{i}"})
        ids.append(view["id"])
        if i % 3 == 0:
            await api(http, "POST", "/v1/events", {"messageId": f"{view['id']}.1", "type": "clicked"})
    return ids


async def state_of(http: aiohttp.ClientSession, ids: list[str], rids: tuple[str, ...] = ()) -> dict[str, Any]:
    """Everything a user reads back (no inbox listing: that marks messages delivered)."""
    return {"sends": [await api(http, "GET", f"/v1/sends/{sid}") for sid in ids],
            "recipients": [await api(http, "GET", f"/v1/recipients/{rid}") for rid in rids],
            "metrics": [await api(http, "GET", f"/v1/templates/{tid}/metrics") for tid in sorted(TEMPLATES)],
            "templates": await api(http, "GET", "/v1/templates"),
            "clock": await api(http, "GET", "/v1/admin/clock")}


# -- the webhook sink ------------------------------------------------------------------

@dataclass
class Post:
    message_id: str
    idempotency_key: str | None
    body: dict[str, Any]
    at: float


class Sink:
    """The user's push endpoint: answers 200 (after an optional random delay,
    so a SIGKILL can land while deliveries are in flight) and records every
    POST with its Idempotency-Key. With `fail_first`, that share of messages
    is answered 503 the first time it arrives (the provider retries)."""

    def __init__(self, max_delay_s: float = 0.0, seed: int = 0, fail_first: float = 0.0) -> None:
        self.posts: list[Post] = []  # answered 200
        self.refused: list[Post] = []  # answered 503
        self.in_flight = 0
        self.max_delay_s = max_delay_s
        self.fail_first = fail_first
        self._tried: set[str] = set()
        self._rng = random.Random(seed)
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def _handle(self, request: web.Request) -> web.Response:
        self.in_flight += 1
        try:
            body = json.loads(await request.read())
            post = Post(body.get("messageId"), request.headers.get("Idempotency-Key"), body, time.monotonic())
            first = post.message_id not in self._tried
            self._tried.add(post.message_id)
            if first and self.fail_first and self._rng.random() < self.fail_first:
                self.refused.append(post)
                return web.json_response({"error": "try again"}, status=503)
            if self.max_delay_s:
                await asyncio.sleep(self._rng.uniform(0.0, self.max_delay_s))
            self.posts.append(post)
            return web.json_response({"ok": True})
        finally:
            self.in_flight -= 1

    def message_ids(self) -> set[str]:
        return {p.message_id for p in self.posts}

    async def start(self) -> Sink:
        app = web.Application()
        app.router.add_post("/push", self._handle)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        port = free_port()
        await web.TCPSite(self._runner, "127.0.0.1", port).start()
        self.url = f"http://127.0.0.1:{port}/push"
        return self

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


# -- the server process ----------------------------------------------------------------

def config_text(data_dir: Path, port: int, *, push_url: str | None = None, clock: str = "manual",
                snapshot_interval_s: float = 60.0, fsync: str = "batch", snapshots_kept: int = 3,
                shards: int = 4, extra: str = "", clock_rate: float = 60.0) -> str:
    text = f"""
[server]
host = "127.0.0.1"
port = {port}
shutdown_timeout_s = 10

[storage]
data_dir = "{data_dir}"
snapshot_interval_s = {snapshot_interval_s}
snapshots_kept = {snapshots_kept}
journal_fsync = "{fsync}"

[auth]
api_keys = {{ "{ADMIN_KEY}" = "admin" }}

[clock]
mode = "{clock}"
rate = {clock_rate}

[engine]
shards = {shards}
"""
    if push_url is not None:
        text += f"""
[channels.push]
provider = "webhook"
url = "{push_url}"
max_attempts = 3
timeout_s = 5
"""
    return text + extra


@dataclass
class ServerProc:
    """`cascade serve` as a child process; each `start()` is a new process
    (a new port, same data dir) with its own log file."""

    workdir: Path
    data_dir: Path
    push_url: str | None = None
    snapshot_interval_s: float = 60.0
    fsync: str = "batch"
    extra: str = ""
    clock: str = "manual"
    clock_rate: float = 60.0
    starts: int = 0
    proc: subprocess.Popen[bytes] | None = None
    port: int = 0
    log_path: Path = field(default_factory=Path)
    pids: list[int] = field(default_factory=list)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> ServerProc:
        assert self.proc is None or self.proc.poll() is not None, "the previous process still runs"
        self.starts += 1
        self.port = free_port()
        cfg = self.workdir / f"cascade-{self.starts}.toml"
        cfg.write_text(config_text(self.data_dir, self.port, push_url=self.push_url, fsync=self.fsync,
                                   snapshot_interval_s=self.snapshot_interval_s, extra=self.extra,
                                   clock=self.clock, clock_rate=self.clock_rate),
                       encoding="utf-8")
        self.log_path = self.workdir / f"serve-{self.starts}.log"
        self.proc = spawn_serve(cfg, self.workdir, self.log_path, log_format="json")
        self.pids.append(self.proc.pid)
        return self

    def log_text(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def log_lines(self) -> list[dict[str, Any]]:
        lines = []
        for raw in self.log_text().splitlines():
            try:
                obj = json.loads(raw)
            except ValueError:
                obj = {"raw": raw}
            lines.append(obj if isinstance(obj, dict) else {"raw": raw})
        return lines

    def events(self, name: str) -> list[dict[str, Any]]:
        return [line for line in self.log_lines() if line.get("event") == name]

    async def wait_ready(self, timeout: float = 20.0) -> None:
        assert self.proc is not None
        async with aiohttp.ClientSession() as http:
            async def ready() -> bool:
                assert self.proc is not None
                if self.proc.poll() is not None:
                    raise AssertionError(f"cascade serve exited with {self.proc.returncode}:\n{self.log_text()}")
                try:
                    async with http.get(f"{self.base}/readyz", timeout=aiohttp.ClientTimeout(total=2)) as r:
                        return r.status == 200
                except (aiohttp.ClientError, asyncio.TimeoutError):
                    return False

            await eventually(ready, "/readyz", timeout=timeout, interval=0.05)

    async def wait_exit(self, timeout: float = 20.0) -> int:
        assert self.proc is not None
        return await asyncio.to_thread(self.proc.wait, timeout)

    def kill9(self) -> None:
        """SIGKILL the process this object started (by its pid) and reap it."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def terminate(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)

    def cleanup(self) -> None:
        """Make sure nothing this object started outlives the test."""
        self.kill9()


# -- an in-process server (for fault injection) ------------------------------------------

def inproc_settings(tmp_path: Path, data_dir: Path) -> Any:
    path = tmp_path / f"{data_dir.name}.toml"
    path.write_text(config_text(data_dir, free_port(), snapshot_interval_s=3600, shards=2), encoding="utf-8")
    return load_settings(path, environ={})


@contextlib.asynccontextmanager
async def running(settings: Any) -> AsyncIterator[tuple[Server, aiohttp.ClientSession]]:
    server = Server(settings)
    await server.start()
    try:
        async with aiohttp.ClientSession(server.url, headers=ADMIN, timeout=aiohttp.ClientTimeout(total=8)) as http:
            yield server, http
    finally:
        await server.stop()


def crash_image(server: Server, to: Path) -> None:
    """What kill -9 would leave of the server's data directory right now."""
    shutil.copytree(server.settings.storage.data_dir, to)


def snapshot_files(data_dir: Path) -> list[Path]:
    d = data_dir / "snapshots"
    return sorted(d.glob("snapshot-*.msgpack")) if d.exists() else []


def snapshot_positions(data_dir: Path) -> list[int]:
    """Journal positions of the snapshot sets on disk, newest first."""
    return sorted({int(p.name.split("-")[1]) for p in snapshot_files(data_dir)}, reverse=True)


def journal_segments(data_dir: Path) -> list[Path]:
    return sorted((data_dir / "journal").glob("journal-*.log"))
