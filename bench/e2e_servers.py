"""The servers an end-to-end run drives: one `cascade serve`, `cascade serve
--workers N` (one address), or a cluster of N nodes on a local NATS
JetStream (1 or 3 servers), each node on its own port.

`start` answers the base URLs clients spread their requests over; `pids`
every process whose CPU is the server side's (nodes, workers, NATS
servers), read at the moment it is called (workers are children of their
supervisor).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchlib import free_port

Spawn = Callable[..., "subprocess.Popen[bytes]"]


def _children(pid: int) -> list[int]:
    out: list[int] = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as f:
                kids = [int(k) for k in f.read().split()]
            for kid in kids:
                out += [kid, *_children(kid)]
    except OSError:
        pass
    return out


class Servers:
    def __init__(self, kind: str, count: int = 1, nats_servers: int = 1) -> None:
        self.kind, self.count, self.nats_servers = kind, count, nats_servers
        self.procs: list[subprocess.Popen[bytes]] = []
        self.nats: Any = None
        self.urls: list[str] = []

    def describe(self) -> str:
        if self.kind == "cluster":
            return (f"a cluster of {self.count} nodes on {self.nats_servers} NATS server(s), "
                    f"replicas {self.nats_servers}")
        return f"cascade serve --workers {self.count}" if self.kind == "workers" else "one cascade serve"

    def start(self, tmp: Path, config: str, cpu: int | None, spawn: Spawn) -> list[str]:
        cascade = Path(sys.executable).parent / "cascade"
        if not cascade.exists():
            raise SystemExit(f"{cascade} not found: run this with the project's interpreter (.venv/bin/python)")
        cfg = tmp / "cascade.toml"
        cfg.write_text(config, encoding="utf-8")
        env = {k: v for k, v in os.environ.items() if not k.startswith("CASCADE_")}
        env["CASCADE_LOG_LEVEL"] = "WARNING"
        if self.kind == "cluster":
            return self._start_cluster(tmp, cascade, cfg, env, cpu, spawn)
        port = free_port()
        cmd = [str(cascade), "serve", "--config", str(cfg), "--data-dir", str(tmp / "data"), "--port", str(port)]
        if self.kind == "workers":
            cmd += ["--workers", str(self.count)]
            cpu = None  # every core is the point
        self.procs.append(spawn(cmd, tmp / "serve.log", cpu, env))
        self.urls = [f"http://127.0.0.1:{port}"]
        return self.urls

    def _start_cluster(self, tmp: Path, cascade: Path, cfg: Path, env: dict[str, str], cpu: int | None,
                       spawn: Spawn) -> list[str]:
        from cascade.cluster.natsd import local_cluster, local_server

        self.nats = (local_server(tmp / "nats") if self.nats_servers == 1
                     else local_cluster(tmp / "nats", self.nats_servers)).start()
        self.nats.wait_ready()
        for i in range(self.count):
            port = free_port()
            node_env = dict(env, CASCADE_CLUSTER_NATS=",".join(self.nats.urls), CASCADE_CLUSTER_NODE=f"n{i + 1}",
                            CASCADE_CLUSTER_REPLICAS=str(self.nats_servers), CASCADE_CLUSTER_PARTITIONS="16")
            self.procs.append(spawn([str(cascade), "serve", "--config", str(cfg), "--data-dir", str(tmp / f"n{i + 1}"),
                                     "--port", str(port)], tmp / f"serve-n{i + 1}.log", None, node_env))
            self.urls.append(f"http://127.0.0.1:{port}")
        return self.urls

    def pids(self) -> list[int]:
        pids = [p.pid for p in self.procs]
        for p in self.procs:
            pids += _children(p.pid)
        if self.nats is not None:
            pids += [s.process.pid for s in self.nats.servers if s.process is not None]
        return list(dict.fromkeys(pids))  # the first is a cascade process: its interpreter is reported

    def logs(self, tmp: Path) -> str:
        return "\n".join(f"-- {log.name}\n{log.read_text(errors='replace')[-3000:]}"
                         for log in sorted(tmp.glob("serve*.log")))

    def stop(self, stop: Callable[[subprocess.Popen[bytes], float], None]) -> list[int | None]:
        for proc in self.procs:
            stop(proc, 30)
        if self.nats is not None:
            self.nats.stop()
        return [p.returncode for p in self.procs]
