"""HTTP benchmark: the real `cascade serve` process driven over loopback.

    ./run bench http [--seconds 10] [--connections 32] [--batch 1000] [--no-pin]

Starts `cascade serve` (manual clock, so no timer fires; push/email/sms on
the in-memory `memory` provider — the phases never reach a provider step
anyway: the template is API.md's example, whose step 1 is the built-in
in-app inbox) on a free loopback port, then drives it with keep-alive
aiohttp clients (`--connections` concurrent requests):

1. `POST /v1/sends` for `--seconds` (at most `--max-sends`);
2. single-event `POST /v1/events` for `--seconds`: `delivered`, then
   `viewed`, `clicked` on the step-1 message ids of phase 1, cycling (once
   every type of every message was sent, the rest are duplicates; the
   answers' accepted/duplicate counts are reported);
3. `{"events": [...]}` batches of `--batch` events for `--seconds` over
   `--batch-connections` connections, cycling on from where phase 2 stopped.
   The first pass is all accepted, then duplicates (a provider re-sending);
   the first pass's own rate is reported too.

Latency is per request, measured by the client from just before the request
is written to the end of the answer's body, so it includes client-side
queueing at `--connections`. The machine has 2 cores and the load generator
is Python too: it runs in its own process (multiprocessing), and with
`--pin` (the default on 2+ cores) the server is pinned to CPU 0 and the
client to CPU 1, so the server gets one core to itself (one is all a
CPython process can use for this work) and the figures are not a tug of war.
`server_cpu` in the table is the server's CPU use over the phase (100% = the
core it has), telling a saturated server from a saturated client.

Prints a table and, last, one JSON line.
"""

from __future__ import annotations

import sys
from pathlib import Path

# This file is named http.py: as a script its directory comes first on
# sys.path and would shadow the standard library's `http`, which aiohttp
# imports. Drop it before anything imports `http`.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.append(str(Path(__file__).resolve().parent))  # at the end: `http` stays the stdlib's

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import signal
import subprocess
import tempfile
import time
from collections import Counter
from typing import Any

from benchlib import ORDER_SHIPPED, cpu_seconds, free_port, percentile, start_server, wait_ready

TYPES = ("delivered", "viewed", "clicked")
JSON = {"Content-Type": "application/json"}


# -- the client process ------------------------------------------------------------

class Phase:
    def __init__(self, name: str) -> None:
        self.name = name
        self.latencies: list[float] = []
        self.statuses: Counter[int] = Counter()
        self.events = 0
        self.accepted = 0
        self.duplicates = 0
        self.elapsed = 0.0
        self.start = 0.0
        self.server_cpu = 0.0
        self.client_cpu = 0.0
        self.fresh_until = 0.0  # batches: when the last all-accepted answer arrived (from phase start)
        self.fresh_events = 0  # events answered by then

    def summary(self) -> dict[str, Any]:
        lat = sorted(self.latencies)
        ok = sum(n for s, n in self.statuses.items() if 200 <= s < 300)
        return {
            "name": self.name, "requests": len(lat), "ok": ok,
            "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
            "elapsed_s": self.elapsed, "req_per_s": ok / self.elapsed if self.elapsed else 0.0,
            "events": self.events, "events_per_s": self.events / self.elapsed if self.elapsed else 0.0,
            "accepted": self.accepted, "duplicates": self.duplicates,
            "p50_ms": percentile(lat, 50) * 1e3, "p90_ms": percentile(lat, 90) * 1e3,
            "p99_ms": percentile(lat, 99) * 1e3, "max_ms": (lat[-1] if lat else 0.0) * 1e3,
            "server_cpu": self.server_cpu, "client_cpu": self.client_cpu,
            "fresh_s": self.fresh_until,
            "fresh_events_per_s": self.fresh_events / self.fresh_until if self.fresh_until else 0.0,
        }


async def _drive(url: str, args: dict[str, Any], server_pid: int) -> list[dict[str, Any]]:
    import aiohttp

    conns = args["connections"]
    connector = aiohttp.TCPConnector(limit=conns, force_close=False)
    timeout = aiohttp.ClientTimeout(total=60)
    send_ids: list[str] = []
    phases: list[Phase] = []
    async with aiohttp.ClientSession(url, connector=connector, timeout=timeout,
                                     skip_auto_headers=("User-Agent",)) as http:

        async def run(phase: Phase, next_body: Any, on_answer: Any, limit: int, workers: int = conns) -> None:
            deadline = time.perf_counter() + args["seconds"]
            issued = 0
            cpu0, t0, own0 = cpu_seconds(server_pid), time.perf_counter(), time.process_time()
            phase.start = t0

            async def worker() -> None:
                nonlocal issued
                while issued < limit and time.perf_counter() < deadline:
                    issued += 1
                    path, body, events = next_body()
                    start = time.perf_counter()
                    async with http.post(path, data=body, headers=JSON) as resp:
                        data = await resp.read()
                        status = resp.status
                    phase.latencies.append(time.perf_counter() - start)
                    phase.statuses[status] += 1
                    if 200 <= status < 300:
                        phase.events += events
                        on_answer(data)

            await asyncio.gather(*(worker() for _ in range(workers)))
            phase.elapsed = time.perf_counter() - t0
            phase.server_cpu = (cpu_seconds(server_pid) - cpu0) / phase.elapsed if phase.elapsed else 0.0
            phase.client_cpu = (time.process_time() - own0) / phase.elapsed if phase.elapsed else 0.0
            phases.append(phase)

        # 1. sends
        counter = iter(range(10**9))

        def send_body() -> tuple[str, bytes, int]:
            i = next(counter)
            return "/v1/sends", (b'{"template":"order-shipped","recipient":"u-%d","data":{"order":{"id":"A%d"}}}'
                                 % (i, i)), 1

        def on_send(data: bytes) -> None:
            k = data.find(b'"id":"') + 6
            send_ids.append(data[k:data.index(b'"', k)].decode())

        await run(Phase("sends"), send_body, on_send, args["max_sends"])
        if not send_ids:
            raise SystemExit("no send was accepted; nothing to send events for")

        # 2 and 3: events on the step-1 messages, cycling through the types
        prefixes = [b'{"messageId":"%s.1","type":"' % sid.encode() for sid in send_ids]
        position = 0

        def next_events(n: int) -> list[bytes]:
            nonlocal position
            out = []
            for _ in range(n):
                kind = TYPES[(position // len(prefixes)) % len(TYPES)].encode()
                out.append(prefixes[position % len(prefixes)] + kind + b'"}')
                position += 1
            return out

        def on_events(data: bytes) -> None:
            answer = json.loads(data)
            accepted = answer.get("accepted", 0)
            current.accepted += accepted
            current.duplicates += answer.get("duplicates", 0)
            if accepted == batch and not current.duplicates:  # still in the first pass over fresh messages
                current.fresh_until = time.perf_counter() - current.start
                current.fresh_events = current.events  # already counts this answer

        batch = 1
        current = Phase("single_events")

        def single_body() -> tuple[str, bytes, int]:
            return "/v1/events", next_events(1)[0], 1

        await run(current, single_body, on_events, 10**9)

        current = Phase("batched_events")

        batch = args["batch"]

        def batch_body() -> tuple[str, bytes, int]:
            return "/v1/events", b'{"events":[' + b",".join(next_events(batch)) + b"]}", batch

        await run(current, batch_body, on_events, 10**9, args["batch_connections"])
    return [p.summary() for p in phases]


def client_main(url: str, args: dict[str, Any], server_pid: int, cpu: int | None, conn: Any) -> None:
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})
    import gc

    gc.freeze()
    try:
        conn.send(("ok", asyncio.run(_drive(url, args, server_pid))))
    except BaseException as exc:  # report, don't hang the parent
        conn.send(("error", repr(exc)))
    finally:
        conn.close()


# -- the parent: server lifecycle, report ------------------------------------------------

async def prepare(url: str, proc: subprocess.Popen[bytes]) -> None:
    import aiohttp

    async with aiohttp.ClientSession(url) as http:
        await wait_ready(http, proc, 30.0)
        async with http.put("/v1/templates/order-shipped", json=ORDER_SHIPPED) as r:
            if r.status not in (200, 201):
                raise SystemExit(f"PUT template answered {r.status}: {await r.text()}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=10.0, help="length of each phase (default 10)")
    ap.add_argument("--connections", type=int, default=32, help="concurrent keep-alive requests (default 32)")
    ap.add_argument("--batch", type=int, default=1000, help="events per batch in phase 3 (default 1000)")
    ap.add_argument("--batch-connections", type=int, default=8,
                    help="concurrent batch requests in phase 3 (default 8: a few producers, each batching)")
    ap.add_argument("--max-sends", type=int, default=200_000, help="cap on phase 1 (default 200000)")
    ap.add_argument("--no-pin", dest="pin", action="store_false", help="do not pin server and client to CPUs")
    args = ap.parse_args()
    pin = args.pin and (os.cpu_count() or 1) >= 2 and hasattr(os, "sched_setaffinity")

    with tempfile.TemporaryDirectory(prefix="cascade-bench-http-") as tmp:
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        proc = start_server(Path(tmp), port, 0 if pin else None)
        try:
            asyncio.run(prepare(url, proc))
            parent, child = mp.get_context("spawn").Pipe(duplex=False)
            client = mp.get_context("spawn").Process(
                target=client_main, args=(url, vars(args), proc.pid, 1 if pin else None, child))
            client.start()
            child.close()
            budget = 3 * args.seconds + 120
            if not parent.poll(budget):
                client.kill()
                raise SystemExit(f"the client did not finish within {budget:.0f} s")
            status, result = parent.recv()
            client.join(10)
            if status != "ok":
                raise SystemExit(f"the client failed: {result}")
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(60)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            log = (Path(tmp) / "serve.log").read_text(errors="replace")
            if proc.returncode != 0:
                print(f"cascade serve exited with {proc.returncode}:\n{log[-4000:]}", file=sys.stderr)

    print(f"cascade serve over loopback: {args.connections} connections ({args.batch_connections} for batches), "
          f"{args.seconds:g} s a phase, "
          f"providers=memory, clock=manual, pinned={'server cpu0 / client cpu1' if pin else 'no'}")
    head = f"{'phase':<15} {'requests':>9} {'non-2xx':>8} {'req/s':>9} {'events/s':>10} " \
           f"{'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} {'max ms':>8} {'server cpu':>10} {'client cpu':>10}"
    print(head)
    print("-" * len(head))
    for p in result:
        print(f"{p['name']:<15} {p['requests']:>9} {p['requests'] - p['ok']:>8} {p['req_per_s']:>9.0f} "
              f"{p['events_per_s']:>10.0f} {p['p50_ms']:>8.2f} {p['p90_ms']:>8.2f} {p['p99_ms']:>8.2f} "
              f"{p['max_ms']:>8.1f} {p['server_cpu'] * 100:>9.0f}% {p['client_cpu'] * 100:>9.0f}%")
    by = {p["name"]: p for p in result}
    for name in ("single_events", "batched_events"):
        p = by[name]
        print(f"{name}: {p['accepted']} accepted, {p['duplicates']} duplicates")
    b = by["batched_events"]
    print(f"batched_events, first pass (every event accepted): {b['fresh_events_per_s']:.0f} events/s "
          f"over {b['fresh_s']:.2f} s")
    s, e, b = by["sends"], by["single_events"], by["batched_events"]
    out = {
        "sends": s["ok"], "sends_per_s": round(s["req_per_s"], 1),
        "sends_p50_ms": round(s["p50_ms"], 3), "sends_p99_ms": round(s["p99_ms"], 3),
        "single_events_per_s": round(e["events_per_s"], 1),
        "single_events_p50_ms": round(e["p50_ms"], 3), "single_events_p99_ms": round(e["p99_ms"], 3),
        "batched_events_per_s": round(b["events_per_s"], 1),
        "batched_p50_ms": round(b["p50_ms"], 3), "batched_p99_ms": round(b["p99_ms"], 3),
        "batched_accepted": b["accepted"], "batched_duplicates": b["duplicates"],
        "batched_fresh_events_per_s": round(b["fresh_events_per_s"], 1), "batched_fresh_s": round(b["fresh_s"], 3),
        "batch_size": args.batch, "connections": args.connections, "batch_connections": args.batch_connections,
        "phase_seconds": args.seconds,
        "non_2xx": {p["name"]: p["requests"] - p["ok"] for p in result},
        "server_cpu": {p["name"]: round(p["server_cpu"], 2) for p in result},
        "client_cpu": {p["name"]: round(p["client_cpu"], 2) for p in result},
        "provider": "memory", "pinned": pin,
    }
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
