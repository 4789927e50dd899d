"""End-to-end benchmark, sink: the webhook provider and the recipients' app.

    .venv/bin/python bench/e2e_sink.py --port PORT --server http://127.0.0.1:SPORT --out FILE

Receives cascade's webhook POSTs (`/hook/<channel>`) and records each arrival
(messageId, step, channel, time). On the first arrival of a message whose
step is the one its recipient engages on (`content.engageAt`, rendered from
the send's data), it reports `{"messageId": ..., "type": "clicked"}` back to
the server with a single `POST /v1/events` at arrival + `content.delayMs`,
as a provider or an app would, and records when that request was meant to
start, when it did, its status and latency. A refused event is not retried:
the benchmark counts it, and the escalation that follows is legitimate.

`GET /stats` answers the counts so far (arrivals, events still to post or
in flight); SIGTERM or SIGINT writes everything to `--out` and exits.
Times are `time.monotonic()`, one system-wide clock on Linux, so they
compare with the load generator's.
"""

from __future__ import annotations

import sys
from pathlib import Path

# bench/http.py would shadow the standard library's `http`: move this
# directory from the front of sys.path to the end.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.append(str(Path(__file__).resolve().parent))

import argparse
import asyncio
import json
import signal
import time
from typing import Any

from e2e_common import client_for, loopbacks, run_fast
from lean_http import ClientError, LeanClient, LeanServerProtocol

_JSON = b"application/json"


class Sink:
    def __init__(self, clients: list[LeanClient]) -> None:
        self.clients, self.turn = clients, 0
        self.arrivals: list[tuple[str, int, str, float]] = []
        self.events: list[dict[str, Any]] = []
        self.seen: set[str] = set()
        self.unreadable = 0  # webhook bodies without a usable fate: a rendering or body-shape problem
        self.pending = 0  # events scheduled or in flight
        self.tasks: set[asyncio.Task[None]] = set()

    def handle(self, method: bytes, url: bytes, body: bytes) -> tuple[int, bytes, bytes]:
        if method == b"POST" and url.startswith(b"/hook/"):
            self.hook(body)
            return 200, b"text/plain", b""
        if method == b"GET" and url == b"/stats":
            return 200, _JSON, json.dumps({"arrivals": len(self.arrivals), "events": len(self.events),
                                           "pending": self.pending}).encode()
        return 404, b"text/plain", b""

    def hook(self, body: bytes) -> None:
        now = time.monotonic()
        msg = json.loads(body)
        mid = msg["messageId"]
        self.arrivals.append((mid, msg["step"], msg["channel"], now))
        if mid not in self.seen:  # delivery is at least once: act on the first copy only
            self.seen.add(mid)
            self._maybe_engage(mid, msg, now)

    def _maybe_engage(self, mid: str, msg: dict[str, Any], now: float) -> None:
        try:
            engage_at = int(msg["content"]["engageAt"])
            delay_s = int(msg["content"]["delayMs"]) / 1000
        except (KeyError, TypeError, ValueError):
            self.unreadable += 1
            return
        if engage_at == msg["step"]:
            self.pending += 1
            asyncio.get_running_loop().call_later(delay_s, self._launch, mid, now + delay_s)

    def _launch(self, mid: str, planned: float) -> None:
        task = asyncio.create_task(self._post_event(mid, planned))
        self.tasks.add(task)  # keep a reference until it is done
        task.add_done_callback(self.tasks.discard)

    async def _post_event(self, mid: str, planned: float) -> None:
        body = b'{"messageId":"%s","type":"clicked"}' % mid.encode()
        start = time.monotonic()
        record: dict[str, Any] = {"messageId": mid, "planned": planned, "start": start, "accepted": False}

        def sent() -> None:
            # When the click's request was written to its socket: a stall in this
            # process between deciding to click and sending is this process's, not
            # the server's (the diagnosis of a wrong delivery tells them apart).
            record["sent"] = time.monotonic()

        try:
            self.turn += 1
            client = self.clients[self.turn % len(self.clients)]
            status, retry_after, answer = await client.post("/v1/events", body, sent)
            record["status"] = status
            record["retryAfter"] = retry_after.decode() if retry_after is not None else None
            if status == 200:
                result = json.loads(answer)
                record["accepted"] = result.get("accepted") == 1
                record["duplicate"] = result.get("duplicates") == 1
                record["errors"] = [e.get("code") for e in result.get("errors", [])]
        except TimeoutError:
            record["status"] = "timeout"
        except (ClientError, OSError) as exc:
            record["status"] = f"error:{type(exc).__name__}"
        record["latency"] = time.monotonic() - start
        self.events.append(record)
        self.pending -= 1

    def result(self) -> dict[str, Any]:
        return {"arrivals": self.arrivals, "events": self.events, "unreadable": self.unreadable,
                "pending": self.pending, "cpu_s": time.process_time()}


async def serve(port: int, servers: list[str], connections: int, timeout_s: float, out: Path) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    sink = Sink([client_for(url, connections, timeout_s) for url in servers])
    listener = await loop.create_server(lambda: LeanServerProtocol(sink.handle), "127.0.0.1", port, backlog=4096)
    try:
        await stop.wait()
    finally:
        listener.close()
    out.write_text(json.dumps(sink.result()), encoding="utf-8")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--port", type=int, required=True, help="loopback port to listen on")
    ap.add_argument("--server", required=True, help="the cascade server, e.g. http://127.0.0.1:8080")
    ap.add_argument("--connections", type=int, default=4096, help="connection pool for events (default 4096)")
    ap.add_argument("--timeout", type=float, default=10.0, help="per-event-request timeout in seconds (default 10)")
    ap.add_argument("--out", required=True, help="where to write the JSON result at exit")
    args = ap.parse_args()
    servers = loopbacks(args.server, "--server")
    run_fast(serve(args.port, servers, args.connections, args.timeout, Path(args.out)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
