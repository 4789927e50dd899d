"""Webhook egress micro-benchmark: client CPU per POST, old path vs new.

    .venv/bin/python bench/webhook_client.py [--posts 20000] [--concurrency 64] [--runs 3]
                                             [--loop asyncio|uvloop] [--no-secret] [--no-pin]

A sink in its own process (a minimal asyncio Protocol server, httptools
request parser, answering every POST `200` with a 2-byte body on keep-alive
connections) listens on a free loopback port. This process then sends
`--posts` webhook deliveries through the product's `DeliveryDispatcher`
(one lane, `--concurrency` in flight, jobs submitted in batches of 256 as
shards do) with each provider:

- `aiohttp`: the previous `WebhookProvider` (one `aiohttp.ClientSession`
  with a `TCPConnector(limit=concurrency)`, `json.dumps` bodies, signature
  `sha256=<hex>`), kept here only, for this comparison;
- `lean`: today's `WebhookProvider` (`httpclient.HttpClient`, msgspec
  bodies, `t=…,sha256=…` signatures);
- `null`: an asynchronous provider answering at once, no I/O: the
  dispatcher's own share, the floor under both.

Each run builds its messages beforehand, warms up (500 posts, connections
opened), then times `--posts` posts: wall time, and this process's CPU time
(`time.process_time`, so the sink's work is not counted, nor time spent
waiting). Runs alternate between the variants; the figures are the median
of `--runs`. With `--pin` (the default on 2+ cores) the sink gets CPU 1 and
the client CPU 0. Prints a table, then one JSON line. Both providers run
through today's dispatcher, about 2 us a job cheaper than the one the
aiohttp provider shipped with, so `aiohttp` slightly flatters the old path.

Measured (2 shared cores, CPython 3.11.7, 20,000 signed posts a run,
concurrency 64, median of 3), client CPU per post:

    loop      aiohttp    lean    null   aiohttp / lean
    asyncio   122.5 us   20.4 us  3.0 us    6.0x
    uvloop    107.1 us   19.8 us  2.3 us    5.4x

The old product path (aiohttp on asyncio's loop) against the new one (lean
on uvloop, the server's loop now): 122.5 / 19.8 = 6.2x. Of the lean post's
~20 us, several are the kernel's: one send and one receive on loopback.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import hmac
import json
import multiprocessing as mp
import os
import random
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, cast

# bench/http.py would shadow the standard library's `http` (aiohttp imports
# it): drop bench/ from the front of sys.path; the project root goes first.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aiohttp  # noqa: E402

from cascade.delivery.dispatcher import DeliveryDispatcher  # noqa: E402
from cascade.delivery.providers.base import DeliveryOutcome, OutgoingMessage  # noqa: E402
from cascade.delivery.providers.webhook import WebhookProvider  # noqa: E402

SECRET = "whsec-bench"


# -- the sink (its own process) ------------------------------------------------------

def sink_main(port_queue: Any, cpu: int | None) -> None:
    import httptools

    if cpu is not None:
        os.sched_setaffinity(0, {cpu})
    try:
        import uvloop
        uvloop.install()
    except ImportError:
        pass
    answer = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nok"

    class Sink(asyncio.Protocol):
        def __init__(self) -> None:
            self.parser = httptools.HttpRequestParser(self)
            self.transport: asyncio.Transport | None = None

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport = cast(asyncio.Transport, transport)  # uvloop's are alike, not subclasses

        def data_received(self, data: bytes) -> None:
            try:
                self.parser.feed_data(data)
            except httptools.HttpParserError:
                assert self.transport is not None
                self.transport.close()

        def on_message_complete(self) -> None:
            assert self.transport is not None
            self.transport.write(answer)

    async def serve() -> None:
        server = await asyncio.get_running_loop().create_server(Sink, "127.0.0.1", 0, backlog=1024)
        port_queue.put(server.sockets[0].getsockname()[1])
        await asyncio.Event().wait()

    asyncio.run(serve())


# -- the previous provider, for comparison only -----------------------------------------

class AiohttpWebhookProvider:
    """The webhook provider as it was before httpclient.py: one
    aiohttp.ClientSession, json.dumps bodies, `sha256=<hex>` signatures."""

    synchronous = False
    _NETWORK_ERRORS = (aiohttp.ClientError, OSError)

    def __init__(self, name: str, url: str, secret: str | None = None, timeout_s: float = 5.0,
                 max_attempts: int = 3, backoff_base_s: float = 0.2, backoff_max_s: float = 5.0,
                 sleep: Callable[[float], Awaitable[object]] = asyncio.sleep, *, max_in_flight: int = 256) -> None:
        self.name, self.url, self.timeout_s, self.max_attempts = name, url, timeout_s, max_attempts
        self.backoff_base_s, self.backoff_max_s, self.max_in_flight = backoff_base_s, backoff_max_s, max_in_flight
        self._secret = secret.encode("utf-8") if secret is not None else None
        self._rng = random.Random()
        self._sleep = sleep
        self._session: aiohttp.ClientSession | None = None

    async def deliver(self, message: OutgoingMessage) -> DeliveryOutcome:
        body = json.dumps(message.payload(), separators=(",", ":"), ensure_ascii=False, default=str).encode("utf-8")
        headers = {"Content-Type": "application/json", "Idempotency-Key": message.message_id}
        if self._secret is not None:
            headers["X-Cascade-Signature"] = "sha256=" + hmac.new(self._secret, body, hashlib.sha256).hexdigest()
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=self.max_in_flight),
                                                  timeout=aiohttp.ClientTimeout(total=self.timeout_s))
        last = ""
        for attempt in range(1, self.max_attempts + 1):
            retry_after: str | None = None
            try:
                async with self._session.post(self.url, data=body, headers=headers, allow_redirects=False) as resp:
                    with contextlib.suppress(asyncio.TimeoutError, *self._NETWORK_ERRORS):
                        await resp.read()
                    status, retry_after = resp.status, resp.headers.get("Retry-After")
            except asyncio.TimeoutError:
                last = "timeout"
            except self._NETWORK_ERRORS as exc:
                last = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            else:
                if 200 <= status < 300:
                    return DeliveryOutcome(True, attempts=attempt)
                if status not in (408, 429) and not 500 <= status < 600:
                    return DeliveryOutcome(False, f"http_{status}", attempts=attempt)
                last = f"http_{status}"
            if attempt < self.max_attempts:
                await self._sleep(self._delay(attempt, retry_after))
        return DeliveryOutcome(False, f"retries_exhausted: {last}", attempts=self.max_attempts)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _delay(self, attempt: int, retry_after: str | None) -> float:
        if retry_after is not None:
            try:
                seconds = float(retry_after)
            except ValueError:
                seconds = -1.0
            if seconds >= 0:
                return min(seconds, self.backoff_max_s)
        return self._rng.uniform(0.0, min(self.backoff_max_s, self.backoff_base_s * 2 ** (attempt - 1)))


class NullProvider:
    """Answers at once: what the dispatcher costs by itself."""

    synchronous = False
    name = "null"
    _OK = DeliveryOutcome(True)

    async def deliver(self, message: OutgoingMessage) -> DeliveryOutcome:
        return self._OK

    async def close(self) -> None:
        return None


# -- the client ------------------------------------------------------------------------

def messages(n: int, start: int) -> list[OutgoingMessage]:
    return [OutgoingMessage(
        f"snd_{i:015x}.2", f"snd_{i:015x}", "order-shipped", 1, 2, "push",
        {"id": f"u-{i}", "email": f"user{i}@example.com", "pushTokens": [f"tok-{i}-1"], "preferences": {}},
        {"title": "Shipped", "body": f"Order A{i} is on its way"}) for i in range(start, start + n)]


async def drive(provider: Any, posts: int, concurrency: int) -> tuple[float, float]:
    """(wall seconds, CPU seconds) for `posts` deliveries through the dispatcher."""
    dispatcher = DeliveryDispatcher({"push": provider}, concurrency, loop=asyncio.get_running_loop())
    dispatcher.start()
    failed: list[Any] = []

    def on_results(results: list[tuple[Any, DeliveryOutcome]]) -> None:
        failed.extend(token for token, outcome in results if not outcome.ok)

    async def run(batch: list[OutgoingMessage]) -> None:
        for start in range(0, len(batch), 256):
            dispatcher.submit([("push", m, m.message_id) for m in batch[start:start + 256]], on_results)
        await dispatcher.wait_idle()

    await run(messages(500, 10_000_000))  # warm-up: connections opened, code paths hot
    batch = messages(posts, 0)
    wall0, cpu0 = time.perf_counter(), time.process_time()
    await run(batch)
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    await dispatcher.aclose(timeout=10)
    if failed:
        raise SystemExit(f"{len(failed)} deliveries failed, e.g. {failed[:3]}")
    return wall, cpu


def one_run(variant: str, url: str, posts: int, concurrency: int, secret: str | None, loop_kind: str) -> dict[str, float]:
    def make() -> Any:
        if variant == "aiohttp":
            return AiohttpWebhookProvider("push", url, secret=secret, max_in_flight=concurrency)
        if variant == "lean":
            return WebhookProvider("push", url, secret=secret, max_in_flight=concurrency)
        return NullProvider()

    async def main() -> tuple[float, float]:
        return await drive(make(), posts, concurrency)

    if loop_kind == "uvloop":
        import uvloop
        wall, cpu = uvloop.run(main())
    else:
        wall, cpu = asyncio.run(main())
    return {"posts_per_s": posts / wall, "cpu_s": cpu, "cpu_us_per_post": cpu / posts * 1e6, "wall_s": wall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--posts", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio")
    parser.add_argument("--variants", default="aiohttp,lean,null")
    parser.add_argument("--no-secret", action="store_true", help="post unsigned")
    parser.add_argument("--pin", action=argparse.BooleanOptionalAction, default=(os.cpu_count() or 1) >= 2)
    args = parser.parse_args()
    variants = [v for v in args.variants.split(",") if v]
    secret = None if args.no_secret else SECRET

    ctx = mp.get_context("spawn")
    ports = ctx.Queue()
    sink = ctx.Process(target=sink_main, args=(ports, 1 if args.pin else None), daemon=True)
    sink.start()
    try:
        port = ports.get(timeout=30)
        url = f"http://127.0.0.1:{port}/push"
        if args.pin:
            os.sched_setaffinity(0, {0})
        print(f"python {sys.version.split()[0]} ({sys.executable}), loop {args.loop}, {args.posts} posts a run, "
              f"concurrency {args.concurrency}, {'signed' if secret else 'unsigned'}, "
              f"pinned {'yes' if args.pin else 'no'}", flush=True)
        runs: dict[str, list[dict[str, float]]] = {v: [] for v in variants}
        for n in range(args.runs):
            for variant in variants:
                figures = one_run(variant, url, args.posts, args.concurrency, secret, args.loop)
                runs[variant].append(figures)
                print(f"  run {n + 1} {variant:8} {figures['posts_per_s']:9.0f} posts/s  "
                      f"{figures['cpu_s']:6.2f} s CPU  {figures['cpu_us_per_post']:7.1f} us/post", flush=True)
    finally:
        sink.terminate()
        sink.join(5)

    med = {v: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for v, rs in runs.items()}
    print(f"\nmedian of {args.runs} runs:")
    print(f"  {'variant':8} {'posts/s':>9} {'CPU s':>7} {'CPU us/post':>12}")
    for v, m in med.items():
        print(f"  {v:8} {m['posts_per_s']:9.0f} {m['cpu_s']:7.2f} {m['cpu_us_per_post']:12.1f}")
    result: dict[str, Any] = {
        "bench": "webhook_client", "python": sys.version.split()[0], "executable": sys.executable,
        "loop": args.loop, "posts": args.posts, "concurrency": args.concurrency, "runs": args.runs,
        "signed": secret is not None, "pinned": args.pin,
        "median": {v: {k: round(x, 2) for k, x in m.items()} for v, m in med.items()},
    }
    if "aiohttp" in med and "lean" in med:
        ratio = med["aiohttp"]["cpu_us_per_post"] / med["lean"]["cpu_us_per_post"]
        result["cpu_per_post_ratio_aiohttp_over_lean"] = round(ratio, 2)
        result["throughput_ratio_lean_over_aiohttp"] = round(med["lean"]["posts_per_s"] / med["aiohttp"]["posts_per_s"], 2)
        print(f"  CPU per post: aiohttp / lean = {ratio:.2f}x")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
