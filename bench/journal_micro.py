"""Micro-benchmark of the storage layer alone (no engine): framing speed and group commit.

Prints encode_records and iter_frames rates over 1,000,000 small records and
the durable append rate of FileJournal(fsync="batch") from 4 threads
appending batches of 100; the last line is one JSON object with the figures.
"""

from __future__ import annotations

import gc
import json
import os
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from cascade.storage import FileJournal, encode_records, iter_frames  # noqa: E402

N = 1_000_000
RECORD = (3, 1234567890123, 1, 2, 1764200000.123)


def timed(fn):  # type: ignore[no-untyped-def]
    began = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - began


def framing() -> tuple[float, float, int]:
    records = [(3, 1234567890123 + i, 1, 2, 1764200000.123) for i in range(N)]
    gc.collect()
    gc.freeze()  # as the engine does after bulk loads: measure framing, not the cyclic GC
    data, encode_s = timed(lambda: encode_records(records))
    reader = iter_frames(data)
    count, decode_s = timed(lambda: sum(1 for _ in reader))
    assert count == N and reader.end == len(data)
    return N / encode_s, N / decode_s, len(data)


def group_commit(closed_loop: bool, threads: int = 4, batches: int = 2_500, size: int = 100) -> dict[str, float]:
    """Open loop: threads append as fast as they can (shards do not wait for acks).
    Closed loop: each thread waits for its previous append to be durable, like a client waiting for 201."""
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_DIR")) as directory:
        journal = FileJournal(directory, "batch")
        done = threading.Semaphore(0)
        batch = [RECORD] * size
        latencies: list[float] = []

        def shard() -> None:
            for _ in range(batches):
                if closed_loop:
                    acked = threading.Event()
                    sent = time.perf_counter()
                    journal.append(batch, acked.set)
                    acked.wait()
                    latencies.append(time.perf_counter() - sent)
                    done.release()
                else:
                    journal.append(batch, done.release)

        workers = [threading.Thread(target=shard) for _ in range(threads)]
        began = time.perf_counter()
        for w in workers:
            w.start()
        for _ in range(threads * batches):
            done.acquire()  # every append acknowledged = durable
        elapsed = time.perf_counter() - began
        for w in workers:
            w.join()
        journal.close()
        stats = journal.stats()
    latencies.sort()
    return {
        "records_per_s": threads * batches * size / elapsed,
        "appends": stats.appends,
        "fsyncs": stats.fsyncs,
        "ack_p99_ms": latencies[int(len(latencies) * 0.99)] * 1000 if latencies else float("nan"),
        "fsync_max_ms": stats.fsync_seconds_max * 1000,
    }


def main() -> None:
    encode_rate, decode_rate, size = framing()
    open_loop, closed = group_commit(closed_loop=False), group_commit(closed_loop=True)
    print(f"{'encode_records':<44}{encode_rate:>12,.0f} records/s  ({size / N:.1f} B/record)")
    print(f"{'iter_frames (crc + decode)':<44}{decode_rate:>12,.0f} records/s")
    for name, r in (("durable, batch, 4 threads, open loop", open_loop), ("durable, batch, 4 threads, closed loop", closed)):
        print(f"{name:<44}{r['records_per_s']:>12,.0f} records/s  "
              f"({r['appends']} appends of 100, {r['fsyncs']} fsyncs, max fsync {r['fsync_max_ms']:.2f} ms)")
    print(f"{'closed loop ack p99':<44}{closed['ack_p99_ms']:>12.2f} ms")
    print(json.dumps({
        "encode_records_per_s": round(encode_rate),
        "iter_frames_records_per_s": round(decode_rate),
        "bytes_per_record": round(size / N, 1),
        "durable_records_per_s": round(open_loop["records_per_s"]),
        "durable_fsyncs": open_loop["fsyncs"],
        "durable_closed_loop_records_per_s": round(closed["records_per_s"]),
        "closed_loop_fsyncs": closed["fsyncs"],
        "closed_loop_ack_p99_ms": round(closed["ack_p99_ms"], 2),
    }))


if __name__ == "__main__":
    main()
