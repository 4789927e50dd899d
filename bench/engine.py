"""Engine benchmark, in-process with a manual clock.

Starts N sends of a 3-step template (inapp -> push -> email), signals half
of them on step 1, then advances time until every send has finished. Prints
a table and, last, one JSON line. Also runs the naive design (one pykka
ThreadingActor and one threading.Timer per send) at a size it survives and
prints how much worse it is per send.

    ./run bench engine [--sends N] [--naive N] [--shards S]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import threading
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import pykka  # noqa: E402

from cascade.engine import Engine, EngineConfig, ManualClock, MemoryProvider  # noqa: E402

TEMPLATE = {
    "name": "bench",
    "channels": [
        {"channel": "inapp", "stopCondition": "viewed", "waitMinutes": 5,
         "content": {"title": "Hi", "body": "Order {{order}} shipped"}},
        {"channel": "push", "stopCondition": "clicked", "waitMinutes": 30,
         "content": {"title": "Shipped", "body": "Order {{order}}"}},
        {"channel": "email", "content": {"subject": "Your order", "body": "Order {{order}} for {{recipient.id}}"}},
    ],
    "config": {"sequenceEnabled": True},
}
RECIPIENTS = 10_000


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class GcPauses:
    """The longest collection, as CPU time of the thread that ran it.

    Wall time between the collector's start and stop callbacks would also
    count the wait to take the interpreter lock back before the stop
    callback runs (other threads run then, so it is no pause): on this
    machine that inflates 0.3 ms young collections to 20 ms and more. A
    collection holds the lock throughout, so its CPU time is the stall it
    causes everyone."""

    def __init__(self) -> None:
        self.max_s = 0.0
        self.max_generation = -1
        self.count = 0
        self.phase = "setup"
        self.by_phase: dict[str, float] = {}
        self._t0 = 0.0
        gc.callbacks.append(self._cb)

    def _cb(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._t0 = time.thread_time()
        else:
            self.count += 1
            took = time.thread_time() - self._t0
            self.by_phase[self.phase] = max(self.by_phase.get(self.phase, 0.0), took)
            if took > self.max_s:
                self.max_s, self.max_generation = took, info["generation"]


def run_engine(n: int, shards: int, chunk: int) -> dict:
    pauses = GcPauses()
    clock = ManualClock(1_764_000_000.0)
    sink = {ch: MemoryProvider(ch, record=False) for ch in ("push", "email", "sms")}
    engine = Engine(clock, sink, EngineConfig(shards=shards, max_pending_per_shard=10_000_000)).start()
    engine.put_template("bench", TEMPLATE).wait()
    rids = [f"user-{i}" for i in range(RECIPIENTS)]
    for rid in rids:
        engine.put_recipient(rid, {"email": f"{rid}@example.com", "pushTokens": ["tok"]})
    engine.stats().wait(None)  # recipients in place before the baseline
    gc.collect()
    base = rss_bytes()

    pauses.phase = "start"
    t0 = time.perf_counter()
    ids: list[str] = []
    replies = []
    for start in range(0, n, chunk):
        reply, chunk_ids = engine.send_many("bench", [rids[i % RECIPIENTS] for i in range(start, min(n, start + chunk))],
                                            {"order": "A1"})
        replies.append(reply)
        ids.extend(chunk_ids)
    for r in replies:
        r.wait(None)
    start_s = time.perf_counter() - t0
    # The benchmark's own list of send ids is not the engine's memory.
    held = rss_bytes() - base - sys.getsizeof(ids) - sum(sys.getsizeof(i) for i in ids)
    active = sum(s["active"] for s in engine.stats().wait(None))

    # The events are the caller's to build: outside the timed part, and out
    # of the collector's sight like any bulk load (they are not the engine's).
    pauses.phase = "build events"
    batches = [[(f"{sid}.1", None, None, "viewed", None) for sid in ids[s:s + chunk:2]] for s in range(0, n, chunk)]
    engine.gc.freeze_now()
    pauses.phase = "signals"
    t0 = time.perf_counter()
    replies = [engine.signals(batch) for batch in batches]
    accepted = sum(r.wait(None)["accepted"] for r in replies)
    signal_s = time.perf_counter() - t0
    del batches

    pauses.phase = "timers"
    t0 = time.perf_counter()
    engine.advance(5 * 60)
    engine.advance(30 * 60)
    timer_s = time.perf_counter() - t0
    stats = engine.stats().wait(None)
    fired = sum(sum(s["lateness_counts"]) for s in stats)
    left = sum(s["active"] for s in stats)
    engine.stop()
    gc.callbacks.clear()
    return {
        "sends": n, "active_held": active, "sends_per_s": n / start_s, "signals": accepted,
        "signals_per_s": accepted / signal_s, "timers_fired": fired, "timers_per_s": fired / timer_s,
        "bytes_per_active_send": held / active, "gc_max_pause_ms": pauses.max_s * 1000, "gc_max_pause_generation": pauses.max_generation,
        "gc_max_pause_ms_by_phase": {k: round(v * 1000, 1) for k, v in pauses.by_phase.items()},
        "gc_collections": pauses.count, "active_after": left,
        "deliveries": sink["push"].accepted + sink["email"].accepted,
    }


class NaiveSend(pykka.ThreadingActor):
    def __init__(self) -> None:
        super().__init__()
        self.timer = threading.Timer(300.0, lambda: None)
        self.timer.daemon = True

    def on_start(self) -> None:
        self.timer.start()

    def on_stop(self) -> None:
        self.timer.cancel()


def run_keyed(n: int, shards: int, keyed: bool = True) -> dict:
    """Memory per active send started one by one (the transactional path),
    with an idempotency key: the send and its key's claim, kept 24 h."""
    clock = ManualClock(1_764_000_000.0)
    engine = Engine(clock, {ch: MemoryProvider(ch, record=False) for ch in ("push", "email", "sms")},
                    EngineConfig(shards=shards, max_pending_per_shard=10_000_000)).start()
    engine.put_template("bench", TEMPLATE).wait()
    rids = [f"user-{i}" for i in range(RECIPIENTS)]
    for rid in rids:
        engine.put_recipient(rid, {"email": f"{rid}@example.com", "pushTokens": ["tok"]})
    keys = [f"order-{i:09d}-shipped" for i in range(n)]  # the caller's strings, built before the baseline
    engine.stats().wait(None)
    gc.collect()
    # Python's allocations, not RSS: the send views this path answers with
    # are freed, but the allocator keeps their pages, which RSS would count.
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    for i in range(n):
        engine.send("bench", rids[i % RECIPIENTS], {"order": "A1"},
                    idempotency_key=keys[i] if keyed else None)[0].wait(None)
    gc.collect()
    held = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    active = sum(s["active"] for s in engine.stats().wait(None))
    engine.stop()
    return {"keyed_sends": n, "bytes_per_active_send_with_key" if keyed else "bytes_per_active_send_one_by_one":
            held / active}


def run_naive(n: int) -> dict:
    gc.collect()
    base = rss_bytes()
    t0 = time.perf_counter()
    refs = [NaiveSend.start() for _ in range(n)]
    start_s = time.perf_counter() - t0
    held = rss_bytes() - base
    for ref in refs:
        ref.stop(block=False)
    pykka.ActorRegistry.stop_all()
    return {"sends": n, "sends_per_s": n / start_s, "bytes_per_active_send": held / n}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sends", type=int, default=1_000_000)
    ap.add_argument("--naive", type=int, default=2_000)
    ap.add_argument("--shards", type=int, default=4)
    ap.add_argument("--chunk", type=int, default=10_000)
    ap.add_argument("--keyed", type=int, default=200_000, help="sends started one by one with idempotency keys")
    args = ap.parse_args()
    r = run_engine(args.sends, args.shards, args.chunk)
    if args.keyed:
        r.update(run_keyed(args.keyed, args.shards, keyed=False))
        r.update(run_keyed(args.keyed, args.shards))
    naive = run_naive(args.naive) if args.naive else None
    rows = [
        ("sends started", f"{r['sends']:,}", f"{r['sends_per_s']:,.0f}/s"),
        ("signals (viewed, half)", f"{r['signals']:,}", f"{r['signals_per_s']:,.0f}/s"),
        ("timer firings (with escalation)", f"{r['timers_fired']:,}", f"{r['timers_per_s']:,.0f}/s"),
        ("memory per active send", f"{r['active_held']:,} held", f"{r['bytes_per_active_send']:,.0f} B"),
        ("memory per active send, started one by one", f"{r.get('keyed_sends', 0):,} sends",
         f"{r.get('bytes_per_active_send_one_by_one', 0):,.0f} B"),
        ("  the same with an idempotency key (its claim too)", "",
         f"{r.get('bytes_per_active_send_with_key', 0):,.0f} B"),
        ("longest GC pause", f"{r['gc_collections']} collections", f"{r['gc_max_pause_ms']:.1f} ms"),
        ("active after advancing", "", f"{r['active_after']:,}"),
    ]
    if naive:
        rows.append((f"naive actor+thread per send ({naive['sends']:,})", f"{naive['sends_per_s']:,.0f}/s",
                     f"{naive['bytes_per_active_send']:,.0f} B"))
        r["naive_bytes_per_send"] = naive["bytes_per_active_send"]
        r["naive_sends_per_s"] = naive["sends_per_s"]
        r["naive_memory_ratio"] = naive["bytes_per_active_send"] / r["bytes_per_active_send"]
        rows.append(("naive / engine memory per send", "", f"{r['naive_memory_ratio']:.0f}x"))
    w = max(len(a) for a, _, _ in rows)
    for a, b, c in rows:
        print(f"{a:<{w}}  {b:>22}  {c:>14}")
    print(json.dumps({k: round(v, 2) if isinstance(v, float) else v for k, v in r.items()}))


if __name__ == "__main__":
    main()
