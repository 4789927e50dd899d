"""Durability benchmark: journal, snapshots and recovery with 1,000,000
active sends, in-process with a manual clock and a file journal
(`journal_fsync = "batch"`) in a temporary directory.

Prints a table and, last, one JSON line with `snapshot_s`,
`snapshot_bytes_per_send`, `max_pause_ms` (the longest a shard kept a
probe waiting while the snapshot was written), `recovery_s` (from the
snapshot), `replay_records_per_s` (journal only) and `durable_events_per_s`
(signals acknowledged after group commit).

Each phase runs as a server would, in a process of its own (this script
again): one builds the data directory and exits; then a fresh process
recovers from the snapshot, and another from the journal alone, as a
restart does. Measured in the process that had just built a million sends
(or beside it while it was still alive), recovery read 25-45% slower than
what a starting server sees.

    ./run bench snapshot [--sends N]
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cascade.engine import Engine, EngineConfig, ManualClock, MemoryProvider  # noqa: E402
from cascade.engine.commands import Command  # noqa: E402
from cascade.engine.reply import Reply  # noqa: E402
from cascade.storage import FileJournal  # noqa: E402
from cascade.durability.coordinator import SnapshotCoordinator  # noqa: E402
from cascade.durability.recovery import recover  # noqa: E402

TEMPLATE = {
    "channels": [
        {"channel": "inapp", "stopCondition": "viewed", "waitMinutes": 60, "content": {"body": "Hi {{name}}"}},
        {"channel": "push", "stopCondition": "clicked", "waitMinutes": 240, "content": {"body": "Still there?"}},
        {"channel": "email", "content": {"subject": "Last call"}},
    ],
    "config": {"sequenceEnabled": True},
}
CHUNK = 10_000


def engine_on(root: Path, shards: int) -> tuple[Engine, FileJournal]:
    journal = FileJournal(root / "journal", fsync="batch")
    providers = {c: MemoryProvider(c, record=False) for c in ("push", "email", "sms")}
    engine = Engine(ManualClock(1_800_000_000.0), providers,
                    EngineConfig(shards=shards, max_pending_per_shard=10_000_000), journal=journal)
    return engine, journal


class Probe(threading.Thread):
    """Asks every shard for nothing every 2 ms and records the longest wait."""

    def __init__(self, engine: Engine) -> None:
        super().__init__(daemon=True)
        self.engine = engine
        self.worst = 0.0
        self.stop_event = threading.Event()

    def run(self) -> None:
        while not self.stop_event.wait(0.002):
            began = time.perf_counter()
            replies = []
            for i in range(len(self.engine.states)):
                reply = Reply()
                self.engine.router.post(i, [Command("tick", None, reply)])
                replies.append(reply)
            for r in replies:
                r.wait(None)
            self.worst = max(self.worst, time.perf_counter() - began)


def recover_alone(root: Path, shards: int) -> None:
    """`--recover`: what a restart does with the data directory; one JSON line."""
    engine, journal = engine_on(root, shards)
    wall, cpu = time.perf_counter(), time.process_time()
    result = recover(engine, str(root / "snapshots"), journal)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    journal.close()
    print(json.dumps({"seconds": result.seconds, "wall_s": wall, "cpu_s": cpu, "replayed": result.replayed,
                      "snapshot_records": result.snapshot_records}))


def build(root: Path, sends: int, shards: int, events_n: int) -> None:
    """`--build`: load the sends, ingest events, take a snapshot; one JSON line."""
    engine, journal = engine_on(root, shards)
    recover(engine, str(root / "snapshots"), journal)
    engine.start()
    engine.put_template("t", TEMPLATE).wait()
    t0 = time.perf_counter()
    ids: list[str] = []
    replies = []
    for s in range(0, sends, CHUNK):
        reply, chunk_ids = engine.send_many("t", [f"u{i % 50_000}" for i in range(s, min(sends, s + CHUNK))],
                                            {"name": "Ada"})
        replies.append(reply)
        ids.extend(chunk_ids)
    for r in replies:
        r.wait(None)
    load_s = time.perf_counter() - t0

    # Durable ingest: batches of 1,000 events, each acknowledged after group commit.
    events = [(f"{sid}.1", None, None, "delivered", None) for sid in ids[:events_n]]
    t0 = time.perf_counter()
    pending = [engine.signals(events[s:s + 1000]) for s in range(0, len(events), 1000)]
    accepted = sum(r.wait(None)["accepted"] for r in pending)
    ingest_s = time.perf_counter() - t0

    probe = Probe(engine)
    probe.start()
    time.sleep(0.05)
    coordinator = SnapshotCoordinator(engine, journal, str(root / "snapshots"), keep=2, interval_s=0)
    info = coordinator.take()
    probe.stop_event.set()
    probe.join()
    records_in_journal = journal.position()
    engine.stop()
    journal.close()
    print(json.dumps({"load_s": load_s, "accepted": accepted, "ingest_s": ingest_s, "snapshot_s": info["seconds"],
                      "snapshot_bytes": info["bytes"], "max_pause_s": probe.worst,
                      "journal_records": records_in_journal}))


def child(*args: str) -> dict:
    """This script in a process of its own: its last line, parsed."""
    out = subprocess.run([sys.executable, __file__, *args], check=True, capture_output=True, text=True,
                         timeout=1200).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sends", type=int, default=1_000_000)
    ap.add_argument("--shards", type=int, default=4)
    ap.add_argument("--events", type=int, default=500_000)
    ap.add_argument("--build", metavar="DIR", help=argparse.SUPPRESS)
    ap.add_argument("--recover", metavar="DIR", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.build:
        build(Path(args.build), args.sends, args.shards, args.events)
        return
    if args.recover:
        recover_alone(Path(args.recover), args.shards)
        return
    root = Path(tempfile.mkdtemp(prefix="cascade-bench-"))
    n, shards = args.sends, str(args.shards)
    try:
        built = child("--build", str(root), "--sends", str(n), "--shards", shards, "--events", str(args.events))
        result = child("--recover", str(root), "--shards", shards)  # from the snapshot: the journal after it is short
        shutil.rmtree(root / "snapshots")
        replay = child("--recover", str(root), "--shards", shards)  # the journal alone
    finally:
        shutil.rmtree(root, ignore_errors=True)

    out = {
        "sends": n,
        "durable_sends_per_s": round(n / built["load_s"]),
        "durable_events_per_s": round(built["accepted"] / built["ingest_s"]),
        "snapshot_s": built["snapshot_s"],
        "snapshot_bytes": built["snapshot_bytes"],
        "snapshot_bytes_per_send": round(built["snapshot_bytes"] / n, 1),
        "max_pause_ms": round(built["max_pause_s"] * 1000, 1),
        "recovery_s": round(result["seconds"], 3),
        "recovery_cpu_s": round(result["cpu_s"], 3),
        "journal_records": built["journal_records"],
        "replay_records_per_s": round(replay["replayed"] / replay["seconds"]),
        "replay_s": round(replay["seconds"], 3),
        "replay_cpu_s": round(replay["cpu_s"], 3),
        "interpreter": platform.python_version(),
    }
    rows = [
        ("sends loaded (journaled, batch fsync)", f"{n:,}", f"{out['durable_sends_per_s']:,}/s"),
        ("durable events (1,000 a batch)", f"{built['accepted']:,}", f"{out['durable_events_per_s']:,}/s"),
        ("snapshot", f"{built['snapshot_bytes'] / 2**20:,.1f} MiB", f"{built['snapshot_s']:.2f} s"),
        ("snapshot bytes per send", "", f"{out['snapshot_bytes_per_send']}"),
        ("longest shard pause during snapshot", "", f"{out['max_pause_ms']} ms"),
        ("recovery from snapshot (a fresh process)", f"{result['snapshot_records']:,} records",
         f"{result['seconds']:.2f} s"),
        ("  its CPU", "", f"{result['cpu_s']:.2f} s"),
        ("journal replay (no snapshot, a fresh process)", f"{replay['replayed']:,} records",
         f"{out['replay_records_per_s']:,}/s"),
        ("  its CPU", "", f"{replay['cpu_s']:.2f} s"),
    ]
    print(f"interpreter: {platform.python_implementation()} {platform.python_version()} ({sys.executable})")
    w = max(len(a) for a, _, _ in rows)
    for a, b, c in rows:
        print(f"{a:<{w}}  {b:>20}  {c:>14}")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
