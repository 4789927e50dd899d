"""StreamJournal on local nats-server processes: acknowledged appends and records
per second with 1 and 3 replicas, records per append 1/100/1000, append-to-ack
latency, CPU seconds of this process and of the servers, and replay speed.

    .venv/bin/python bench/stream_journal.py [--quick] [--sync-always]

Two ways of appending per configuration: "serial" waits for each ack before
the next append (the round trip of one publish), "stream" appends from one
thread as fast as the journal takes them (group commit: one publish carries
everything queued meanwhile; latency then includes the wait in the queue).
All servers run on this machine; with 3 replicas they share its cores with
this process. Prints a table, then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path[0] = str(Path(__file__).resolve().parent.parent)  # not bench/: its http.py would shadow the stdlib's

from cascade.cluster.client import NatsThread
from cascade.cluster.natsd import NatsCluster
from cascade.cluster.stream_journal import StreamJournal

TICK = os.sysconf("SC_CLK_TCK")


def server_cpu(cluster: NatsCluster) -> float:
    total = 0.0
    for server in cluster.servers:
        if server.process is not None and server.alive:
            fields = Path(f"/proc/{server.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / TICK
    return total


def record(i: int) -> tuple[Any, ...]:
    # about the size of an engine record inside a ShardBatch (~35-60 B packed)
    return ("StepFired", 0x1234_5678_9ABC + i, 2, 1_733_100_000.25 + i, "email", 1)


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def run(client: NatsThread, cluster: NatsCluster, partition: int, replicas: int, per_append: int, appends: int,
        serial: bool) -> dict[str, Any]:
    journal = StreamJournal(client, partition, "bench", 1, replicas=replicas)
    records = [record(i) for i in range(per_append)]
    latencies: list[float] = []
    done = threading.Event()
    remaining = [appends]
    lock = threading.Lock()

    def acked(began: float) -> None:
        latencies.append(time.perf_counter() - began)
        with lock:
            remaining[0] -= 1
            if remaining[0] == 0:
                done.set()

    cpu0, srv0, wall0 = time.process_time(), server_cpu(cluster), time.perf_counter()
    for _ in range(appends):
        began = time.perf_counter()
        if serial:
            one = threading.Event()
            journal.append(records, lambda b=began, e=one: (acked(b), e.set()))
            if not one.wait(30):
                raise SystemExit("an append was not acknowledged within 30 s")
        else:
            journal.append(records, lambda b=began: acked(b))
    if not done.wait(120):
        raise SystemExit("appends not acknowledged within 120 s")
    wall = time.perf_counter() - wall0
    cpu, srv = time.process_time() - cpu0, server_cpu(cluster) - srv0
    publishes = journal.stats().writes - 1  # less the takeover record
    r0 = time.perf_counter()
    replayed = sum(1 for _ in journal.replay())
    replay_s = time.perf_counter() - r0
    journal.close()
    assert replayed == appends * per_append, (replayed, appends * per_append)
    return {
        "replicas": replicas, "records_per_append": per_append, "mode": "serial" if serial else "stream",
        "appends": appends, "seconds": round(wall, 3), "appends_per_s": round(appends / wall),
        "records_per_s": round(appends * per_append / wall), "publishes": publishes,
        "ack_p50_ms": round(quantile(latencies, 0.5) * 1000, 3), "ack_p99_ms": round(quantile(latencies, 0.99) * 1000, 3),
        "cpu_s": round(cpu, 3), "cpu_us_per_record": round(cpu / (appends * per_append) * 1e6, 2),
        "server_cpu_s": round(srv, 3), "replay_records_per_s": round(replayed / replay_s),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a tenth of the appends")
    parser.add_argument("--sync-always", action="store_true", help="servers with sync_interval: always")
    args = parser.parse_args()
    scale = 0.1 if args.quick else 1.0
    plan = [(1, 20_000, 500), (100, 2_000, 300), (1000, 300, 100)]  # records per append, stream appends, serial
    results = []
    interpreter = f"{platform.python_implementation()} {platform.python_version()}"
    print(f"# {interpreter}, nats-server from {NatsCluster.__module__}, {os.cpu_count()} cores, "
          f"sync_interval {'always' if args.sync_always else 'default (2 min)'}")
    header = (f"{'repl':>4} {'rec/app':>7} {'mode':>6} {'appends/s':>10} {'records/s':>10} {'pubs':>6} "
              f"{'p50 ms':>8} {'p99 ms':>8} {'cpu s':>6} {'us/rec':>7} {'srv cpu':>7} {'replay/s':>10}")
    print(header)
    partition = 0
    for replicas in (1, 3):
        with tempfile.TemporaryDirectory() as tmp, \
                NatsCluster(tmp, replicas, sync_always=args.sync_always) as cluster, \
                NatsThread(cluster.urls, name="bench") as client:
            for per_append, stream_n, serial_n in plan:
                for serial, n in ((True, serial_n), (False, stream_n)):
                    partition += 1
                    r = run(client, cluster, partition, replicas, per_append, max(10, int(n * scale)), serial)
                    results.append(r)
                    print(f"{r['replicas']:>4} {r['records_per_append']:>7} {r['mode']:>6} {r['appends_per_s']:>10} "
                          f"{r['records_per_s']:>10} {r['publishes']:>6} {r['ack_p50_ms']:>8} {r['ack_p99_ms']:>8} "
                          f"{r['cpu_s']:>6} {r['cpu_us_per_record']:>7} {r['server_cpu_s']:>7} "
                          f"{r['replay_records_per_s']:>10}", flush=True)
    load = os.getloadavg()
    print(json.dumps({"bench": "stream_journal", "interpreter": interpreter, "sync_always": args.sync_always,
                      "loadavg": [round(x, 2) for x in load], "median_stream_records_per_s": statistics.median(
                          r["records_per_s"] for r in results if r["mode"] == "stream"), "results": results}))


if __name__ == "__main__":
    main()
