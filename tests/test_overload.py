"""API rule 11 under real overload: a `cascade serve` process is offered far
more single `POST /v1/sends` than it and its (slow, bounded) providers can
take, while the providers' sink and the app report each signal with its own
`POST /v1/events` inside the window. The server must refuse the sends beyond its capacity with 503 +
`Retry-After`, keep every write it accepted, and never escalate a chain
whose signal reached it before the deadline: judged by the server's own
record of each send (when the click arrived, when the window ended)."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any, AsyncIterator

import aiohttp
import pytest
from aiohttp import web
from serverproc import ADMIN, ServerProc, eventually, free_port

from cascade.domain.timefmt import parse_iso

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

RATE = 150.0  # scaled clock: a 5-minute window lasts 2 s
OFFERED_PER_S = 2500  # single requests, open loop: well above what one process on this machine takes
SECONDS = 4.0
WINDOW_S = 300 / RATE  # real seconds
CLICK_AFTER_S = 0.3  # real seconds after a step arrives: well inside its window
PROVIDER_LATENCY_S = 0.02  # each post takes this long, at most MAX_IN_FLIGHT at a time per channel:
MAX_IN_FLIGHT = 8  # the providers take ~400 messages/s per channel, far less than is offered
TEMPLATE = {"channels": [
    {"channel": "push", "stopCondition": "clicked", "waitMinutes": 5, "content": {"body": "{{fate}}"}},
    {"channel": "email", "stopCondition": "clicked", "waitMinutes": 5, "content": {"subject": "{{fate}}"}},
    {"channel": "sms", "content": {"body": "{{fate}}"}},
], "config": {"sequenceEnabled": True}}


class Provider:
    """The three channels' endpoint, and the app behind it: records every
    message and clicks the step its send's fate says, shortly after it arrives."""

    def __init__(self, http: aiohttp.ClientSession) -> None:
        self.http = http
        self.base = ""  # the server's address, once it runs
        self.arrivals: dict[str, int] = {}  # messageId -> times posted
        self.arrived_at: dict[str, float] = {}  # messageId -> when it first arrived (monotonic)
        self.clicks: dict[str, int] = {}  # messageId -> the click's answer status
        self.clicked_at: dict[str, float] = {}  # messageId -> when the app decided to click (monotonic)
        # messageId -> when the click's body was written to its socket (monotonic): this process's
        # own loop is busy offering the load, and a click it writes late is late.
        self.sent_at: dict[str, float] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    async def handle(self, request: web.Request) -> web.Response:
        await asyncio.sleep(PROVIDER_LATENCY_S)
        body = json.loads(await request.read())
        mid = body["messageId"]
        self.arrivals[mid] = self.arrivals.get(mid, 0) + 1
        self.arrived_at.setdefault(mid, time.monotonic())
        fate = int((body["content"].get("body") or body["content"].get("subject") or "0"))
        if body["step"] == fate and mid not in self.clicks:
            task = asyncio.create_task(self._click(mid))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return web.json_response({"ok": True})

    async def _click(self, mid: str) -> None:
        await asyncio.sleep(CLICK_AFTER_S)
        self.clicks[mid] = -1
        self.clicked_at[mid] = time.monotonic()
        try:
            async with self.http.post(f"{self.base}/v1/events", json={"messageId": mid, "type": "clicked"},
                                      trace_request_ctx={"mid": mid}) as r:
                self.clicks[mid] = r.status
        except aiohttp.ClientError:
            self.clicks[mid] = 0


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[tuple[ServerProc, Provider, aiohttp.ClientSession]]:
    sink_port = free_port()
    url = f"http://127.0.0.1:{sink_port}/deliver"
    channels = "".join(f'\n[channels.{ch}]\nprovider = "webhook"\nurl = "{url}"\nmax_in_flight = {MAX_IN_FLIGHT}\n'
                       for ch in ("push", "email", "sms"))
    serve = ServerProc(tmp_path, tmp_path / "data", extra=channels, clock="scaled", clock_rate=RATE)
    conn = aiohttp.TCPConnector(limit=2000)
    sent_at: dict[str, float] = {}

    async def body_sent(_: Any, context: Any, __: Any) -> None:
        mid = (context.trace_request_ctx or {}).get("mid")
        if mid is not None:
            sent_at.setdefault(mid, time.monotonic())

    tracing = aiohttp.TraceConfig()
    tracing.on_request_chunk_sent.append(body_sent)  # the head goes out with the body
    async with aiohttp.ClientSession(headers=ADMIN, connector=conn, trace_configs=[tracing],
                                     timeout=aiohttp.ClientTimeout(total=30)) as http:
        provider = Provider(http)
        provider.sent_at = sent_at
        app = web.Application()
        app.router.add_post("/deliver", provider.handle)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", sink_port).start()
        try:
            yield serve, provider, http
        finally:
            serve.cleanup()
            await runner.cleanup()


async def test_overload_refuses_sends_with_503_and_never_escalates_an_engaged_chain(rig: Any) -> None:
    serve, provider, http = rig
    serve.start()
    await serve.wait_ready()
    base = provider.base = serve.base
    async with http.put(f"{base}/v1/templates/t", json=TEMPLATE) as r:
        assert r.status == 201, await r.text()

    outcomes: list[tuple[int, str | None, str | None, int]] = []  # (status, send id, Retry-After, fate)

    async def one(i: int) -> None:
        fate = i % 4  # engages on step 1, 2 or 3, or (0) never
        body = {"template": "t", "data": {"fate": fate},
                "recipient": {"id": f"u{i}", "email": f"u{i}@x.io", "phone": "+15550100", "pushTokens": ["t"]}}
        try:
            async with http.post(f"{base}/v1/sends", json=body) as r:
                sent = await r.json() if r.status in (200, 202) else None
                outcomes.append((r.status, sent and sent["id"], r.headers.get("Retry-After"), fate))
        except (aiohttp.ClientError, asyncio.TimeoutError):
            outcomes.append((0, None, None, fate))

    began = time.monotonic()
    tasks = []
    n = int(OFFERED_PER_S * SECONDS)
    for i in range(n):  # open loop: each send on its own schedule, whatever the answers
        delay = began + i / OFFERED_PER_S - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(i)))
    await asyncio.gather(*tasks)

    accepted = [(sid, fate) for status, sid, _, fate in outcomes if status == 202]
    refused = [o for o in outcomes if o[0] == 503]
    assert refused, "the offered load never overloaded the server: nothing to judge"
    assert all(o[2] is not None for o in refused), "every 503 says when to retry"
    assert not [o for o in outcomes if o[0] not in (202, 503)], sorted({o[0] for o in outcomes})
    assert accepted, "the server accepted nothing"

    async def finished() -> bool:
        async with http.get(f"{base}/v1/templates/t/metrics") as r:
            return (await r.json())["sends"]["active"] == 0

    await eventually(finished, "every accepted send to finish", timeout=90, interval=0.5)

    wrong, missing, lost = [], [], []
    for sid, fate in accepted:
        async with http.get(f"{base}/v1/sends/{sid}") as r:
            if r.status != 200:
                lost.append(sid)
                continue
            view = await r.json()
        steps = view["steps"]
        for k, step in enumerate(steps[:-1]):
            mid, after = step["messageId"], steps[k + 1]["messageId"]
            if after not in provider.arrivals or provider.clicks.get(mid) != 200:
                continue
            # Wrong by the server's own record (the click reached it before the deadline), or by
            # the recipient's: their click left well inside the window counted from when the
            # message reached them, and the server escalated anyway (its own backlog ate the window).
            clicked, deadline = step["signals"]["clicked"], step["deadline"]
            if (clicked is not None and deadline is not None and parse_iso(clicked) < parse_iso(deadline)) \
                    or provider.sent_at[mid] - provider.arrived_at[mid] < WINDOW_S / 2:
                wrong.append((sid, k + 1, step.get("firedAt"), deadline, clicked))
        last = fate if fate else 3
        for step in steps[:last]:
            if step["messageId"] not in provider.arrivals and step["status"] != "skipped":
                missing.append((sid, step["step"], step["status"]))
        for step in steps:
            if provider.clicks.get(step["messageId"]) in (200,) and step["signals"]["clicked"] is None:
                lost.append(step["messageId"])  # an acknowledged click the server does not show
    clicked = [m for m, status in provider.clicks.items() if status == 200]
    assert len(clicked) >= len(accepted) // 2, "the app's clicks did not reach the server: nothing was judged"
    assert not lost, f"acknowledged writes lost: {lost[:10]}"
    assert not wrong, f"{len(wrong)} chains escalated although their click reached the server in time: {wrong[:5]}"
    assert not missing, f"{len(missing)} steps that should have fired never arrived: {missing[:5]}"
