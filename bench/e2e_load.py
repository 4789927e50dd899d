"""End-to-end benchmark, load generator: open-loop `POST /v1/sends`.

    .venv/bin/python bench/e2e_load.py --url http://127.0.0.1:PORT --rate R --sends N --out FILE

Send i is due at start + i / rate, whatever happened to the sends before it:
the schedule never waits for answers, and requests run over a connection pool
far larger than the server's comfortable concurrency, so a slow server shows
as rising latency, 503s or errors, not as a lower offered rate. Each send
names an inline recipient with every address (so all three channels can
fire) and carries its fate in `data`: `engageAt` (the step the recipient
clicks, 0 = never) and `delayMs` (how long after arrival), rendered into the
webhook bodies by the template's placeholders so that the sink can act on
them. Writes one JSON document to `--out` when the last answer is in.
Started by bench/e2e.py; runnable alone against any server with the template.
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
import time
from typing import Any

from e2e_common import TEMPLATE, client_for, loopbacks, run_fast
from lean_http import ClientError, LeanClient

PACE_S = 0.001  # the schedule's granularity

# Fates in percent of sends: click on step 1, 2, 3, or never (0).
FATE_SHARES = ((1, 40), (2, 30), (3, 10), (0, 20))


def fate(i: int) -> tuple[int, int]:
    """(engageAt, delayMs) of send i: deterministic, but mixed so that
    neighbouring sends differ (a multiplicative hash, not i % 100)."""
    h = (i * 2654435761) & 0xFFFFFFFF
    bucket = h % 100
    for engage_at, share in FATE_SHARES:
        if bucket < share:
            break
        bucket -= share
    delay_ms = 300 + (h >> 8) % 701  # 0.3-1.0 s: well inside a 2 s window
    return engage_at, delay_ms


def send_body(i: int, run: str) -> bytes:
    engage_at, delay_ms = fate(i)
    rid = f"{run}-{i}"
    return json.dumps({
        "template": TEMPLATE,
        "recipient": {"id": rid, "email": f"{rid}@example.com", "phone": f"+1555{i:07d}",
                      "pushTokens": [f"tok-{rid}"]},
        "data": {"engageAt": engage_at, "delayMs": delay_ms},
    }, separators=(",", ":")).encode()


async def one_send(http: LeanClient, i: int, due: float, run: str) -> dict[str, Any]:
    body = send_body(i, run)
    start = time.monotonic()
    record: dict[str, Any] = {"i": i, "fate": fate(i)[0], "due": due, "start": start}
    try:
        status, retry_after, answer = await http.post("/v1/sends", body)
        record["status"] = status
        record["retryAfter"] = retry_after.decode() if retry_after is not None else None
        if status == 202:
            record["id"] = json.loads(answer)["id"]
    except TimeoutError:
        record["status"] = "timeout"
    except (ClientError, OSError) as exc:
        record["status"] = f"error:{type(exc).__name__}"
    record["latency"] = time.monotonic() - start
    return record


async def drive(urls: list[str], rate: float, count: int, connections: int, timeout_s: float,
                run: str) -> list[dict[str, Any]]:
    clients = [client_for(url, connections, timeout_s) for url in urls]
    t0 = time.monotonic() + 0.05
    tasks = []
    i = 0
    while i < count:
        now = time.monotonic()
        # Everything due is issued at once: when this loop falls behind it
        # catches up in a burst instead of lowering the offered rate.
        while i < count and t0 + i / rate <= now:
            tasks.append(asyncio.create_task(one_send(clients[i % len(clients)], i, t0 + i / rate, run)))
            i += 1
        if i < count:
            # At least a millisecond: a timer per send cost this process a fifth
            # of its CPU at 3,000/s; sends due in the same millisecond go together.
            await asyncio.sleep(max(PACE_S, t0 + i / rate - time.monotonic()))
    # Every request ends by its own timeout, so this wait is bounded.
    return list(await asyncio.gather(*tasks))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--url", required=True, help="the server, e.g. http://127.0.0.1:8080 (a cluster's nodes: "
                    "comma-separated, used in turn)")
    ap.add_argument("--rate", type=float, required=True, help="offered sends per second")
    ap.add_argument("--sends", type=int, required=True, help="how many sends to issue")
    ap.add_argument("--connections", type=int, default=4096, help="connection pool size (default 4096)")
    ap.add_argument("--timeout", type=float, default=10.0, help="per-request timeout in seconds (default 10)")
    ap.add_argument("--run", default="e2e", help="prefix of the recipient ids (default e2e)")
    ap.add_argument("--out", required=True, help="where to write the JSON result")
    args = ap.parse_args()
    urls = loopbacks(args.url, "--url")
    sends = run_fast(drive(urls, args.rate, args.sends, args.connections, args.timeout, args.run))
    Path(args.out).write_text(json.dumps({"sends": sends, "cpu_s": time.process_time()}), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
