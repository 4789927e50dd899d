"""What the end-to-end benchmark's processes share (bench/e2e.py runs
e2e_sink.py and e2e_load.py): plain values and the clients' plumbing.
Import it only after moving bench/ to the end of sys.path, as they do."""

from __future__ import annotations

import asyncio
import gc
from typing import Any, Coroutine, TypeVar

from lean_http import LeanClient

T = TypeVar("T")

TEMPLATE = "e2e-sequence"


def loopback(url: str, flag: str) -> str:
    """All the benchmark's traffic stays on this machine."""
    if not url.startswith("http://127.0.0.1:"):
        raise SystemExit(f"{flag} must be a loopback http://127.0.0.1:PORT address, not {url!r}")
    return url


def loopbacks(urls: str, flag: str) -> list[str]:
    """Comma-separated servers (a cluster's nodes): requests go to each in turn."""
    return [loopback(url, flag) for url in urls.split(",")]


def client_for(url: str, connections: int, timeout_s: float) -> LeanClient:
    host, port = url.removeprefix("http://").rstrip("/").split(":")
    return LeanClient(host, int(port), connections, timeout_s)


def run_fast(main: Coroutine[Any, Any, T]) -> T:
    """Run a client process on uvloop where it imports (cascade depends on
    it on Linux): the two clients share one core. Survivors are frozen out
    of the cyclic collector every `FREEZE_S`: a client keeps a record of
    every request it made, and with hundreds of thousands of them each full
    collection stalled its schedule for a few hundred milliseconds (at
    10,000 sends/s the generator fell 270-510 ms behind at p99, and the
    bursts it then sent to catch up were what the server saw)."""
    async def frozen() -> T:
        freezer = asyncio.create_task(_freeze_survivors())
        try:
            return await main
        finally:
            freezer.cancel()

    try:
        import uvloop
    except ImportError:
        return asyncio.run(frozen())
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(frozen())


FREEZE_S = 1.0


async def _freeze_survivors() -> None:
    while True:
        await asyncio.sleep(FREEZE_S)
        gc.freeze()
