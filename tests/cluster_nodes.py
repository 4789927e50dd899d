"""A harness for cluster tests: N real `cascade serve` nodes on loopback
against a NATS JetStream cluster, each with its own port, data directory
and log, all pushing to one webhook sink.

A node is started, awaited (bounded poll on /readyz), SIGKILLed, paused
(SIGSTOP) and resumed (SIGCONT), or drained (SIGTERM, awaited exit) by the
pid of the process this harness started, never by name. HTTP helpers are
synchronous (urllib), so a test can drive load from plain threads while the
sink answers on a loop thread of its own. `Cluster.close` leaves no node
running (a paused one is resumed first so the kill lands) and answers the
end of every node's log, which the fixture prints: pytest shows it only for
a failing test.

Imported by test modules (tests/ is on sys.path); not a test module itself.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from serverproc import ADMIN, Post, Sink, config_text, free_port, spawn_serve

from cascade.cluster.assign import partition_of_key, partition_of_recipient, share
from cascade.domain.ids import parse_send_id

__all__ = ["Answer", "Cluster", "ClusterNode", "ThreadSink", "partition_of_send", "poll"]

PARTITIONS = 8


def poll(check: Callable[[], Any], what: str, timeout: float, interval: float = 0.05) -> Any:
    """Call `check` until it answers something truthy; AssertionError naming `what` after `timeout` s.
    (The interval is a polling period of a bounded wait, not a stand-in for a condition.)"""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        last = check()
        if last:
            return last
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what} (last: {str(last)[:300]})")
        time.sleep(interval)


def partition_of_send(send_id: str, partitions: int = PARTITIONS) -> int:
    key = parse_send_id(send_id)
    assert key is not None, send_id
    return partition_of_key(key, partitions)


def partition_of(rid: str, partitions: int = PARTITIONS) -> int:
    return partition_of_recipient(rid, partitions)


# -- the sink, on a loop of its own ------------------------------------------------------

class ThreadSink:
    """serverproc.Sink (every POST recorded with its Idempotency-Key) served from its own thread."""

    def __init__(self, max_delay_s: float = 0.0) -> None:
        self.sink = Sink(max_delay_s=max_delay_s)
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="sink-loop", daemon=True)
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self.sink.start(), self.loop).result(10)
        self.url = self.sink.url

    def posts(self) -> list[Post]:
        return list(self.sink.posts)

    def by_message(self) -> dict[str, list[Post]]:
        out: dict[str, list[Post]] = {}
        for post in self.posts():
            out.setdefault(post.message_id, []).append(post)
        return out

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.sink.close(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


# -- one node -------------------------------------------------------------------------------

@dataclass
class Answer:
    status: int  # 0: no answer (connection refused, timeout)
    body: Any
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300


@dataclass
class ClusterNode:
    """One `cascade serve` process of the cluster; `start()` again after an exit reuses its data dir."""

    name: str
    workdir: Path
    nats: list[str]
    push_url: str
    prefix: str
    partitions: int = PARTITIONS
    replicas: int = 3
    lease_s: float = 2.0
    clock_rate: float = 60.0
    snapshot_interval_s: float = 60.0
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0
    paused: bool = False
    logs: list[Path] = field(default_factory=list)

    @property
    def data_dir(self) -> Path:
        return self.workdir / self.name / "data"

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> ClusterNode:
        assert not self.running, f"{self.name} still runs"
        self.starts += 1
        self.port = free_port()
        home = self.workdir / self.name
        home.mkdir(parents=True, exist_ok=True)
        cluster = (f'\n[cluster]\nnats = {json.dumps(self.nats)}\nnode = "{self.name}"\n'
                   f'partitions = {self.partitions}\nreplicas = {self.replicas}\nlease_s = {self.lease_s}\n'
                   f'prefix = "{self.prefix}"\n')
        cfg = home / f"cascade-{self.starts}.toml"
        cfg.write_text(config_text(self.data_dir, self.port, push_url=self.push_url, clock="scaled",
                                   clock_rate=self.clock_rate, snapshot_interval_s=self.snapshot_interval_s,
                                   extra=cluster), encoding="utf-8")
        log_path = home / f"serve-{self.starts}.log"
        self.logs.append(log_path)
        self.proc = spawn_serve(cfg, home, log_path, log_format="logfmt")
        return self

    def wait_ready(self, timeout: float = 30.0) -> ClusterNode:
        def ready() -> bool:
            if self.proc is None or self.proc.poll() is not None:
                raise AssertionError(f"{self.name} exited with {self.proc and self.proc.returncode}:\n"
                                     f"{self.log_tail(40)}")
            return self.get("/readyz", timeout=2.0).status == 200

        poll(ready, f"{self.name} /readyz", timeout)
        return self

    # -- signals, by this process's pid only -----------------------------------------------
    def kill9(self) -> None:
        if self.running:
            assert self.proc is not None
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        self.paused = False

    def pause(self) -> None:
        assert self.proc is not None and self.running
        os.kill(self.proc.pid, signal.SIGSTOP)
        self.paused = True

    def resume(self) -> None:
        if self.proc is not None and self.paused and self.running:
            os.kill(self.proc.pid, signal.SIGCONT)
        self.paused = False

    def terminate(self) -> None:
        assert self.proc is not None and self.running
        os.kill(self.proc.pid, signal.SIGTERM)

    def wait_exit(self, timeout: float) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    # -- HTTP -----------------------------------------------------------------------------
    def call(self, method: str, path: str, body: Any = None, timeout: float = 20.0, *,
             csv: str | None = None) -> Answer:
        """`body` as JSON, or `csv` as text/csv."""
        data = csv.encode() if csv is not None else json.dumps(body).encode() if body is not None else None
        kind = "text/csv" if csv is not None else "application/json"
        request = urllib.request.Request(self.base + path, data=data, method=method,
                                         headers={**ADMIN, "Content-Type": kind})
        try:
            with urllib.request.urlopen(request, timeout=timeout) as answer:
                raw = answer.read()
                return Answer(answer.status, json.loads(raw) if raw else None, dict(answer.headers))
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            try:
                parsed: Any = json.loads(raw) if raw else None
            except ValueError:
                parsed = raw.decode(errors="replace")
            return Answer(exc.code, parsed, dict(exc.headers))
        except (OSError, ValueError) as exc:  # refused, reset, timed out
            return Answer(0, repr(exc))

    def get(self, path: str, timeout: float = 20.0) -> Answer:
        return self.call("GET", path, timeout=timeout)

    def has(self, path: str) -> bool:
        """GET `path` answers 2xx."""
        return self.get(path, timeout=5.0).ok

    def post(self, path: str, body: Any, timeout: float = 20.0) -> Answer:
        return self.call("POST", path, body, timeout=timeout)

    def put(self, path: str, body: Any, timeout: float = 20.0) -> Answer:
        return self.call("PUT", path, body, timeout=timeout)

    def ok(self, method: str, path: str, body: Any = None) -> Any:
        """The body of a 2xx answer; AssertionError with the answer otherwise."""
        answer = self.call(method, path, body)
        assert answer.ok, f"{self.name}: {method} {path} -> {answer.status} {str(answer.body)[:500]}"
        return answer.body

    def list_sends(self, query: str = "") -> list[dict[str, Any]]:
        """Every send GET /v1/sends?<query> lists, page by page (the API's limit is 200 a page)."""
        out: list[dict[str, Any]] = []
        cursor = None
        while True:
            page = self.ok("GET", f"/v1/sends?limit=200{'&' + query if query else ''}"
                           + (f"&before={cursor}" if cursor else ""))
            out += page["sends"]
            cursor = page["next"]
            if cursor is None:
                return out

    def admin(self) -> dict[str, Any]:
        return dict(self.ok("GET", "/v1/admin/cluster"))

    def log_text(self) -> str:
        return "\n".join(f"=== {p.name}\n" + p.read_text(encoding="utf-8", errors="replace")
                         for p in self.logs if p.exists())

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])


# -- the cluster ---------------------------------------------------------------------------

class Cluster:
    """Nodes named n1, n2, ... against `nats` (a started natsd.NatsCluster), one sink."""

    def __init__(self, workdir: Path, nats: Any, prefix: str, *, lease_s: float = 2.0,
                 snapshot_interval_s: float = 60.0, sink_delay_s: float = 0.0) -> None:
        self.workdir, self.nats, self.prefix = workdir, nats, prefix
        self.lease_s, self.snapshot_interval_s = lease_s, snapshot_interval_s
        self.sink = ThreadSink(max_delay_s=sink_delay_s)
        self.nodes: dict[str, ClusterNode] = {}
        self.started_once = False

    def add(self, name: str) -> ClusterNode:
        node = ClusterNode(name, self.workdir, list(self.nats.urls), self.sink.url, self.prefix,
                           lease_s=self.lease_s, snapshot_interval_s=self.snapshot_interval_s)
        self.nodes[name] = node
        return node

    def start(self, *names: str, timeout: float = 30.0, together: bool = False) -> list[ClusterNode]:
        """Start these nodes and wait until each is ready. The first node of a new cluster starts alone
        unless `together`: nodes creating the cluster's buckets at once can crash (see test_cluster.py,
        test_nodes_started_together_on_a_new_cluster_all_come_up)."""
        nodes = [self.nodes.get(n) or self.add(n) for n in names]
        if not together and not self.started_once:
            nodes[0].start().wait_ready(timeout)
            rest = nodes[1:]
        else:
            rest = nodes
        self.started_once = True
        for node in rest:
            node.start()
        if rest:
            with ThreadPoolExecutor(len(rest)) as pool:
                list(pool.map(lambda n: n.wait_ready(timeout), rest))
        return nodes

    def __getitem__(self, name: str) -> ClusterNode:
        return self.nodes[name]

    def running(self) -> list[ClusterNode]:
        return [n for n in self.nodes.values() if n.running and not n.paused]

    # -- ownership, as the admin view tells it ----------------------------------------------
    @staticmethod
    def owners(view: dict[str, Any]) -> dict[int, tuple[str | None, int]]:
        return {e["partition"]: (e["owner"], e["epoch"]) for e in view["partitions"]}

    def expected(self, names: Iterable[str]) -> dict[int, str]:
        """Who rendezvous hashing gives each partition among `names`."""
        members = sorted(names)
        return {p: n for n in members for p in share(n, members, PARTITIONS)}

    def wait_balanced(self, names: Iterable[str], timeout: float = 20.0, via: ClusterNode | None = None
                      ) -> dict[int, tuple[str | None, int]]:
        """Until every partition is owned by its rendezvous owner among `names` and answers (a position),
        as `via` (default: every one of `names`) sees it. Answers the owners and epochs."""
        names = sorted(names)
        want = self.expected(names)
        viewers = [via] if via is not None else [self.nodes[n] for n in names]

        def balanced() -> dict[int, tuple[str | None, int]] | None:
            seen = None
            for viewer in viewers:
                # Short: a view that forwards to a paused node waits for it; the next poll asks again.
                answer = viewer.get("/v1/admin/cluster", timeout=2.0)
                if not answer.ok:
                    return None
                owners = self.owners(answer.body)
                if {p: o for p, (o, _) in owners.items()} != want:
                    return None
                if any(e.get("position") is None for e in answer.body["partitions"]):
                    return None
                seen = owners
            return seen

        found: dict[int, tuple[str | None, int]] = poll(balanced, f"partitions balanced over {names}", timeout,
                                                        interval=0.1)
        return found

    def close(self) -> str:
        """Kill every node still running (resuming a paused one first); the end of each one's log."""
        tails = []
        for node in self.nodes.values():
            node.resume()
            node.kill9()
            tails.append(f"----- {node.name} (port {node.port}) -----\n{node.log_tail(80)}")
        self.sink.close()
        return "\n".join(tails)
