"""Cluster benchmark: cascade nodes over a local NATS JetStream cluster.

    ./run bench cluster [--nodes 1,2,3] [--seconds 8] [--failover-sends 100000]

Three parts, every one over real sockets against real `cascade serve`
processes (manual partitions: `cluster.partitions` 16, a scaled clock so no
window ends during a phase; deliveries on the `memory` provider):

1. Throughput with 1, 2 and 3 nodes on a 3-server JetStream cluster
   (replicas 3), and one single server (local journal, fsync batch) as the
   baseline, each phase for `--seconds` at a fixed concurrency
   (`--connections` requests in flight, spread over the nodes in turn: a
   capacity figure, closed loop; bench/e2e.py --nodes is the open-loop,
   correctness-checked one): single `POST /v1/sends`, batched sends (100 a
   request), single `POST /v1/events` and batched events (500 a request).
2. Latency of one acknowledged write, one request at a time: a single
   server with its local journal against a node whose journal has 1
   replica and one with 3 (p50/p99 of 2,000 sequential sends).
3. Failover: `--failover-sends` active sends per node on 3 nodes, one
   node killed with SIGKILL; the time until every partition has an owner
   again and until a send of every lost partition reads back (its
   partitions recovered), and that none of the sends is missing.

This machine has 2 cores: nodes, NATS servers and the client share them, so
more nodes add processes, not cores; the ratios say what the design costs
here, not what a machine with a core per node shows. CPU seconds of the
server side (nodes and NATS servers) are reported beside each figure.
Prints tables, then one JSON line.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.append(str(Path(__file__).resolve().parent))

import argparse
import asyncio
import json
import os
import platform
import signal
import subprocess
import tempfile
import time
from typing import Any

import aiohttp

from benchlib import ORDER_SHIPPED, cpu_seconds, free_port, percentile, wait_ready

JSON = {"Content-Type": "application/json"}
PARTITIONS = 16


class Deployment:
    """One single server, or N nodes over a NATS cluster of `nats` servers."""

    def __init__(self, tmp: Path, nodes: int, nats: int, replicas: int) -> None:
        self.tmp, self.nodes, self.nats_size, self.replicas = tmp, nodes, nats, replicas
        self.procs: list[subprocess.Popen[bytes]] = []
        self.nats: Any = None
        self.urls: list[str] = []

    def label(self) -> str:
        return "single server" if not self.nodes else f"{self.nodes} node(s), {self.replicas} replica(s)"

    def start(self) -> Deployment:
        cascade = Path(sys.executable).parent / "cascade"
        env = {k: v for k, v in os.environ.items() if not k.startswith("CASCADE_")}
        env.update(CASCADE_LOG_LEVEL="WARNING", CASCADE_CLOCK_MODE="scaled", CASCADE_CLOCK_RATE="1",
                   CASCADE_CHANNELS_PUSH_PROVIDER="memory", CASCADE_STORAGE_SNAPSHOT_INTERVAL_S="0")
        if self.nodes:
            from cascade.cluster.natsd import local_cluster, local_server

            self.nats = (local_server(self.tmp / "nats") if self.nats_size == 1
                         else local_cluster(self.tmp / "nats", self.nats_size)).start()
            self.nats.wait_ready()
        for i in range(max(1, self.nodes)):
            port = free_port()
            node_env = dict(env)
            if self.nodes:
                node_env.update(CASCADE_CLUSTER_NATS=",".join(self.nats.urls), CASCADE_CLUSTER_NODE=f"n{i + 1}",
                                CASCADE_CLUSTER_REPLICAS=str(self.replicas),
                                CASCADE_CLUSTER_PARTITIONS=str(PARTITIONS), CASCADE_CLUSTER_LEASE_S="2")
            log = open(self.tmp / f"node{i + 1}.log", "ab")
            self.procs.append(subprocess.Popen([str(cascade), "serve", "--port", str(port), "--data-dir",
                                                str(self.tmp / f"data{i + 1}")], env=node_env, stdout=log,
                                               stderr=subprocess.STDOUT))
            self.urls.append(f"http://127.0.0.1:{port}")
        return self

    def pids(self) -> list[int]:
        pids = [p.pid for p in self.procs if p.poll() is None]
        if self.nats is not None:
            pids += [s.process.pid for s in self.nats.servers if s.process is not None and s.alive]
        return pids

    def cpu(self) -> float:
        return sum(cpu_seconds(pid) for pid in self.pids())

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
        if self.nats is not None:
            self.nats.stop()


async def ready(http: aiohttp.ClientSession, d: Deployment, limit_s: float = 90.0) -> None:
    deadline = time.monotonic() + limit_s
    for url, proc in zip(d.urls, d.procs):
        async with aiohttp.ClientSession(url) as node:
            await wait_ready(node, proc, limit_s, what=f"cascade serve at {url} (logs in {d.tmp})")
    if d.nodes:
        await owned(http, d.urls[0], d.nodes, deadline)


async def owned(http: aiohttp.ClientSession, url: str, nodes: int, deadline: float) -> dict[str, Any]:
    """Wait until every partition has an owner among `nodes` live nodes; the view."""
    while True:
        try:
            async with http.get(url + "/v1/admin/cluster") as r:
                view: dict[str, Any] = await r.json()
            owners = {p["owner"] for p in view["partitions"]}
            if None not in owners and len(owners) == nodes:
                return view
        except (aiohttp.ClientError, KeyError, ValueError):
            pass
        if time.monotonic() > deadline:
            raise SystemExit("the cluster did not settle in time")
        await asyncio.sleep(0.05)  # polling the admin view, bounded


async def closed_loop(http: aiohttp.ClientSession, urls: list[str], path: str, bodies: Any, seconds: float,
                      connections: int, per_request: int) -> dict[str, Any]:
    """`connections` workers posting `bodies()` for `seconds`: items/s, statuses, latency."""
    stop_at = time.monotonic() + seconds
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    n = 0

    async def worker(k: int) -> None:
        nonlocal n
        while time.monotonic() < stop_at:
            url = urls[(k + n) % len(urls)]
            n += 1
            began = time.monotonic()
            async with http.post(url + path, data=bodies(), headers=JSON) as r:
                await r.read()
                statuses[r.status] = statuses.get(r.status, 0) + 1
            latencies.append(time.monotonic() - began)

    began = time.monotonic()
    await asyncio.gather(*(worker(k) for k in range(connections)))
    elapsed = time.monotonic() - began
    ok = sum(v for s, v in statuses.items() if 200 <= s < 300)
    ms = sorted(x * 1e3 for x in latencies)
    return {"items_per_s": round(ok * per_request / elapsed, 1), "requests": len(latencies), "statuses": statuses,
            "p50_ms": round(percentile(ms, 50), 1), "p99_ms": round(percentile(ms, 99), 1)}


class Bodies:
    """Request bodies: sends to fresh recipients, events on the sends made so far."""

    def __init__(self, run: str) -> None:
        self.run, self.i = run, 0
        self.message_ids: list[str] = []

    def send(self) -> dict[str, Any]:
        self.i += 1
        return {"template": "t", "recipient": {"id": f"{self.run}-{self.i}", "pushTokens": ["x"]},
                "data": {"order": {"id": self.i}}}

    def one_send(self) -> bytes:
        return json.dumps(self.send()).encode()

    def batch_sends(self, n: int) -> bytes:
        return json.dumps({"sends": [self.send() for _ in range(n)]}).encode()

    def events(self, n: int) -> bytes:
        ids = self.message_ids
        self.i += n
        return json.dumps({"events": [{"messageId": ids[(self.i + k) % len(ids)], "type": "delivered"}
                                      for k in range(n)]}).encode()


async def throughput(d: Deployment, seconds: float, connections: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=0)) as http:
        await ready(http, d)
        async with http.put(d.urls[0] + "/v1/templates/t", json=ORDER_SHIPPED) as r:
            assert r.status in (200, 201), await r.text()
        await asyncio.sleep(0.5)  # the template reaches the other nodes' registries (milliseconds)
        bodies = Bodies(f"r{d.nodes}")
        phases = [("sends", "/v1/sends", bodies.one_send, 1),
                  ("sends batched x100", "/v1/sends", lambda: bodies.batch_sends(100), 100)]
        for name, path, make, per in phases:
            cpu0 = d.cpu()
            out[name] = await closed_loop(http, d.urls, path, make, seconds, connections, per)
            out[name]["server_cpu_s"] = round(d.cpu() - cpu0, 2)
        # Events name the step-1 messages of sends made above (GET /v1/sends lists them).
        async with http.get(d.urls[0] + "/v1/sends?limit=200") as r:
            listed = (await r.json())["sends"]
        bodies.message_ids = [s["steps"][0]["messageId"] for s in listed]
        for name, per in (("events", 1), ("events batched x500", 500)):
            cpu0 = d.cpu()
            out[name] = await closed_loop(http, d.urls, "/v1/events", lambda per=per: bodies.events(per), seconds,
                                          connections if per == 1 else 4, per)
            out[name]["server_cpu_s"] = round(d.cpu() - cpu0, 2)
    return out


async def latency(d: Deployment, count: int) -> dict[str, Any]:
    async with aiohttp.ClientSession() as http:
        await ready(http, d)
        async with http.put(d.urls[0] + "/v1/templates/t", json=ORDER_SHIPPED) as r:
            assert r.status in (200, 201)
        bodies = Bodies("lat")
        ms = []
        for _ in range(count):
            began = time.perf_counter()
            async with http.post(d.urls[0] + "/v1/sends", data=bodies.one_send(), headers=JSON) as r:
                await r.read()
                assert r.status == 202, r.status
            ms.append((time.perf_counter() - began) * 1e3)
        ms.sort()
        return {"p50_ms": round(percentile(ms, 50), 2), "p99_ms": round(percentile(ms, 99), 2)}


async def failover(d: Deployment, per_node: int) -> dict[str, Any]:
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=0)) as http:
        await ready(http, d)
        async with http.put(d.urls[0] + "/v1/templates/t", json=ORDER_SHIPPED) as r:
            assert r.status in (200, 201)
        await asyncio.sleep(0.5)  # the template reaches every node
        bodies = Bodies("fo")
        ids: list[str] = []
        began = time.monotonic()

        async def load(k: int) -> None:
            while len(ids) < per_node * d.nodes:
                async with http.post(d.urls[k % d.nodes] + "/v1/sends", data=bodies.batch_sends(500),
                                     headers=JSON) as r:
                    answer = await r.json()
                if r.status != 200:  # 503: the cluster is behind; back off as a client should
                    await asyncio.sleep(float(r.headers.get("Retry-After", "1")) / 4)
                    continue
                ids.extend(item["send"]["id"] for item in answer["results"] if item["status"] == 202)
        await asyncio.gather(*(load(k) for k in range(6)))
        loaded_s = time.monotonic() - began
        view = await owned(http, d.urls[0], d.nodes, time.monotonic() + 30)
        victim = d.nodes - 1
        lost = [p["partition"] for p in view["partitions"] if p["owner"] == f"n{victim + 1}"]
        by_partition: dict[int, str] = {}
        from cascade.cluster.assign import partition_of_key
        from cascade.domain.ids import parse_send_id

        for sid in ids:
            key = parse_send_id(sid)
            assert key is not None
            by_partition.setdefault(partition_of_key(key, PARTITIONS), sid)
        killed = time.monotonic()
        d.procs[victim].send_signal(signal.SIGKILL)
        survivors = d.urls[:victim]
        await owned(http, survivors[0], d.nodes - 1, killed + 120)
        owned_s = time.monotonic() - killed
        pending = {p: by_partition[p] for p in lost if p in by_partition}
        while pending:
            for p, sid in list(pending.items()):
                async with http.get(survivors[0] + f"/v1/sends/{sid}") as r:
                    if r.status == 200:
                        del pending[p]
            if time.monotonic() - killed > 180:
                raise SystemExit(f"partitions {sorted(pending)} not served 180 s after the kill")
        served_s = time.monotonic() - killed
        missing = 0
        sample = ids[:: max(1, len(ids) // 2000)]
        for sid in sample:
            async with http.get(survivors[0] + f"/v1/sends/{sid}") as r:
                missing += r.status != 200
        return {"active_sends": len(ids), "loaded_s": round(loaded_s, 1), "lost_partitions": lost,
                "owned_again_s": round(owned_s, 2), "served_again_s": round(served_s, 2),
                "sampled": len(sample), "missing": missing}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--nodes", default="1,2,3", help="node counts to measure (default 1,2,3)")
    ap.add_argument("--seconds", type=float, default=8.0, help="length of each throughput phase (default 8)")
    ap.add_argument("--connections", type=int, default=32, help="requests in flight (default 32)")
    ap.add_argument("--latency-sends", type=int, default=2000, help="sequential sends per latency run")
    ap.add_argument("--failover-sends", type=int, default=100_000, help="active sends per node (0: skip)")
    ap.add_argument("--skip", default="", help="comma-separated parts to skip: throughput,latency,failover")
    opts = ap.parse_args()
    skip = set(opts.skip.split(",")) - {""}
    result: dict[str, Any] = {"interpreter": f"{platform.python_implementation()} {platform.python_version()} "
                                             f"({sys.executable})", "cores": os.cpu_count()}
    print(f"cascade cluster benchmark, {result['interpreter']}, {result['cores']} cores", flush=True)

    def run(nodes: int, nats: int, replicas: int, part: Any, *args: Any) -> Any:
        with tempfile.TemporaryDirectory(prefix="cascade-cluster-bench-") as name:
            d = Deployment(Path(name), nodes, nats, replicas).start()
            try:
                return asyncio.run(part(d, *args))
            finally:
                d.stop()

    if "throughput" not in skip:
        result["throughput"] = {}
        for nodes in [0] + [int(n) for n in opts.nodes.split(",")]:
            label = "single server" if not nodes else f"{nodes} node(s)"
            figures = run(nodes, 3, 3, throughput, opts.seconds, opts.connections)
            result["throughput"][label] = figures
            print(f"-- {label}" + ("" if not nodes else " on 3 NATS servers, replicas 3"), flush=True)
            for phase, f in figures.items():
                print(f"   {phase:<22} {f['items_per_s']:>10.1f}/s  p50 {f['p50_ms']:>7.1f} ms  p99 "
                      f"{f['p99_ms']:>7.1f} ms  server CPU {f['server_cpu_s']:>6.2f} s  {f['statuses']}", flush=True)
    if "latency" not in skip:
        result["latency"] = {
            "single server, local journal": run(0, 0, 1, latency, opts.latency_sends),
            "node, 1 replica": run(1, 1, 1, latency, opts.latency_sends),
            "node, 3 replicas": run(1, 3, 3, latency, opts.latency_sends),
        }
        print("-- one acknowledged send at a time:", flush=True)
        for label, f in result["latency"].items():
            print(f"   {label:<30} p50 {f['p50_ms']:>6.2f} ms  p99 {f['p99_ms']:>6.2f} ms", flush=True)
    if "failover" not in skip and opts.failover_sends:
        f = run(3, 3, 3, failover, opts.failover_sends)
        result["failover"] = f
        print(f"-- failover: {f['active_sends']} active sends on 3 nodes (loaded in {f['loaded_s']} s), one "
              f"killed: partitions {f['lost_partitions']} owned again after {f['owned_again_s']} s, all served "
              f"after {f['served_again_s']} s; {f['missing']} of {f['sampled']} sampled sends missing", flush=True)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
