"""What the benchmarks that run a real `cascade serve` share: a free port,
the server process (manual clock, `memory` providers, optionally pinned to a
CPU), waiting for it to be ready, and the figures read off /proc.

Imported by scripts that first drop `bench/` from the front of sys.path
(bench/http.py would shadow the standard library's `http`) and put it back
at the end.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def percentile(values: list[float], p: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)  # cheap when already sorted
    return ordered[min(len(ordered) - 1, max(0, round(p / 100 * (len(ordered) - 1))))]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (0 once it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except OSError:
        return 0.0


def peak_rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0


def start_server(workdir: Path, port: int, cpu: int | None, fsync: str = "batch") -> subprocess.Popen[bytes]:
    """`cascade serve` on loopback: manual clock, `memory` providers, data and
    log (`serve.log`) under `workdir`."""
    cfg = workdir / "cascade.toml"
    cfg.write_text(f"""
[server]
host = "127.0.0.1"
port = {port}

[storage]
data_dir = "{workdir / 'data'}"
journal_fsync = "{fsync}"

[clock]
mode = "manual"

[channels.push]
provider = "memory"
[channels.email]
provider = "memory"
[channels.sms]
provider = "memory"
""", encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith("CASCADE_")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    env["CASCADE_LOG_LEVEL"] = "WARNING"
    cmd = [sys.executable, "-m", "cascade.cli", "serve", "--config", str(cfg)]
    pin = (lambda: os.sched_setaffinity(0, {cpu})) if cpu is not None else None
    with open(workdir / "serve.log", "wb") as log:
        return subprocess.Popen(cmd, cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT, preexec_fn=pin)


async def wait_ready(http: Any, proc: subprocess.Popen[bytes], timeout_s: float = 60.0, path: str = "/readyz",
                     what: str = "cascade serve") -> None:
    """Poll `path` (until 200) with an aiohttp session based at the process's URL."""
    import aiohttp

    deadline = time.monotonic() + timeout_s
    while True:
        if proc.poll() is not None:
            raise SystemExit(f"{what} exited with {proc.returncode}")
        try:
            async with http.get(path) as r:
                if r.status == 200:
                    return
        except aiohttp.ClientConnectionError:
            pass
        if time.monotonic() > deadline:
            raise SystemExit(f"{what} did not become ready in {timeout_s:g} s")
        await asyncio.sleep(0.05)
