"""Forwarding between processes: NATS request/reply against a Unix socket.

    ./run bench forwarding [--calls 20000] [--in-flight 1,64]

The two transports `--workers N` could forward calls over: the cluster
design's (a request through a local NATS server to the owning process,
as cluster/node.py does with nats-py) and a local-sockets design's (a
length-prefixed msgpack frame over a Unix socket to the owning process,
asyncio streams). A 200-byte frame each way, answered at once by a
responder in its own process, `--calls` calls at each level of calls in
flight. Reports calls/s, latency p50/p99, and the CPU of the caller and of
the responder a call (and of the NATS server). A component figure: it says
what the transport alone costs, not what a whole send costs.
Prints a table, then one JSON line.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.append(str(Path(__file__).resolve().parent))

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import struct
import tempfile
import time
from typing import Any

import msgpack

from benchlib import cpu_seconds, percentile

FRAME = msgpack.packb(["send", 3, ["order-shipped", {"id": "user-1234", "email": "u@example.com"},
                                   {"order": {"id": "A-1"}}, "key-" + "x" * 120]])
ANSWER = msgpack.packb([0, {"id": "snd_0123456789abcde", "status": "active", "steps": [1, 2, 3] * 20}])


def nats_responder(url: str, ready: Any) -> None:
    import nats

    async def main() -> None:
        nc = await nats.connect(url)

        async def answer(msg: Any) -> None:
            msgpack.unpackb(msg.data)
            await msg.respond(ANSWER)
        await nc.subscribe("bench.node.b", cb=answer)
        await nc.flush()
        ready.set()
        await asyncio.Event().wait()
    asyncio.run(main())


def socket_responder(path: str, ready: Any) -> None:
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            try:
                head = await reader.readexactly(8)
            except asyncio.IncompleteReadError:
                return
            tag, size = struct.unpack("!II", head)
            msgpack.unpackb(await reader.readexactly(size))
            writer.write(struct.pack("!II", tag, len(ANSWER)) + ANSWER)

    async def main() -> None:
        server = await asyncio.start_unix_server(serve, path)
        ready.set()
        async with server:
            await server.serve_forever()
    asyncio.run(main())


async def nats_calls(url: str, calls: int, in_flight: int) -> list[float]:
    import nats

    nc = await nats.connect(url)
    latencies: list[float] = []

    async def worker(n: int) -> None:
        for _ in range(n):
            began = time.perf_counter()
            msg = await nc.request("bench.node.b", FRAME, timeout=10)
            msgpack.unpackb(msg.data)
            latencies.append(time.perf_counter() - began)
    await asyncio.gather(*(worker(calls // in_flight) for _ in range(in_flight)))
    await nc.close()
    return latencies


async def socket_calls(path: str, calls: int, in_flight: int) -> list[float]:
    reader, writer = await asyncio.open_unix_connection(path)
    waiting: dict[int, asyncio.Future[bytes]] = {}
    latencies: list[float] = []

    async def read_answers() -> None:
        while True:
            tag, size = struct.unpack("!II", await reader.readexactly(8))
            waiting.pop(tag).set_result(await reader.readexactly(size))

    answers = asyncio.create_task(read_answers())
    loop = asyncio.get_running_loop()
    tags = iter(range(1 << 30))

    async def worker(n: int) -> None:
        for _ in range(n):
            began = time.perf_counter()
            tag = next(tags)
            future = waiting[tag] = loop.create_future()
            writer.write(struct.pack("!II", tag, len(FRAME)) + FRAME)
            msgpack.unpackb(await future)
            latencies.append(time.perf_counter() - began)
    await asyncio.gather(*(worker(calls // in_flight) for _ in range(in_flight)))
    answers.cancel()
    writer.close()
    return latencies


def measure(kind: str, run: Any, calls: int, in_flight: int, responder_pid: int, nats_pid: int | None) -> dict[str, Any]:
    others = [responder_pid] + ([nats_pid] if nats_pid else [])
    cpu0, other0, wall0 = time.process_time(), sum(map(cpu_seconds, others)), time.perf_counter()
    latencies = asyncio.run(run(calls, in_flight))
    wall = time.perf_counter() - wall0
    cpu, other = time.process_time() - cpu0, sum(map(cpu_seconds, others)) - other0
    ms = sorted(x * 1e3 for x in latencies)
    n = len(latencies)
    return {"transport": kind, "in_flight": in_flight, "calls_per_s": round(n / wall), "p50_ms": round(percentile(ms, 50), 3),
            "p99_ms": round(percentile(ms, 99), 3), "caller_cpu_us": round(cpu / n * 1e6, 1),
            "other_side_cpu_us": round(other / n * 1e6, 1)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--calls", type=int, default=20_000)
    ap.add_argument("--in-flight", default="1,64")
    opts = ap.parse_args()
    from cascade.cluster.natsd import local_server

    rows = []
    with tempfile.TemporaryDirectory(prefix="cascade-forwarding-") as tmp:
        nats = local_server(Path(tmp) / "nats").start()
        nats.wait_ready()
        try:
            url, sock = nats.urls[0], os.path.join(tmp, "owner.sock")
            ctx = mp.get_context("spawn")
            ready_n, ready_s = ctx.Event(), ctx.Event()
            pn = ctx.Process(target=nats_responder, args=(url, ready_n), daemon=True)
            ps = ctx.Process(target=socket_responder, args=(sock, ready_s), daemon=True)
            pn.start()
            ps.start()
            if not (ready_n.wait(30) and ready_s.wait(30)):
                raise SystemExit("a responder did not start")
            nats_pid = nats.servers[0].process.pid
            for in_flight in (int(x) for x in opts.in_flight.split(",")):
                rows.append(measure("NATS request/reply", lambda c, f: nats_calls(url, c, f), opts.calls, in_flight,
                                    pn.pid or 0, nats_pid))
                rows.append(measure("Unix socket", lambda c, f: socket_calls(sock, c, f), opts.calls, in_flight,
                                    ps.pid or 0, None))
            pn.kill()
            ps.kill()
        finally:
            nats.stop()
    print(f"forwarding one call ({len(FRAME)} B there, {len(ANSWER)} B back), {opts.calls} calls, "
          f"Python {sys.version.split()[0]}")
    for r in rows:
        print(f"  {r['transport']:<20} in flight {r['in_flight']:>3}: {r['calls_per_s']:>7}/s  p50 {r['p50_ms']:>6.3f} ms"
              f"  p99 {r['p99_ms']:>6.3f} ms  CPU a call: caller {r['caller_cpu_us']:>6.1f} us, other side "
              f"{r['other_side_cpu_us']:>6.1f} us")
    print(json.dumps({"rows": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
