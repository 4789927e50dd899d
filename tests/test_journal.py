"""The journal: one behaviour suite for every implementation, then file-only guarantees."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from cascade.storage.codec import encode_record, encode_records
from cascade.storage.journal import FileJournal, Journal, JournalClosed, JournalError, MemoryJournal, segment_name

Opener = Callable[[], Journal]


@pytest.fixture(params=["file-batch", "file-always", "file-off", "memory"])
def open_journal(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Opener]:
    """Opens (and reopens) one journal's backing store; closes whatever is left open."""
    opened: list[Journal] = []
    storage: dict[int, bytearray] = {}

    def opener() -> Journal:
        kind = request.param
        journal: Journal = MemoryJournal(storage) if kind == "memory" else FileJournal(tmp_path, kind[5:])
        opened.append(journal)
        return journal

    yield opener
    for journal in opened:
        journal.close()


def batch(tag: Any, n: int) -> list[tuple[Any, int]]:
    return [(tag, i) for i in range(n)]


def test_replay_gives_every_record_in_append_order_with_its_position(open_journal: Opener) -> None:
    journal = open_journal()
    assert journal.append(batch("a", 3)) == 3
    assert journal.append(batch("b", 2)) == 5
    assert journal.position() == 5
    journal.close()
    assert list(journal.replay()) == [(1, ("a", 0)), (2, ("a", 1)), (3, ("a", 2)), (4, ("b", 0)), (5, ("b", 1))]
    assert list(journal.replay(after=3)) == [(4, ("b", 0)), (5, ("b", 1))]


def test_replay_while_open_sees_every_acknowledged_record(open_journal: Opener) -> None:
    journal = open_journal()
    durable = threading.Event()
    journal.append(batch("a", 4))
    journal.append(batch("b", 4), durable.set)
    assert durable.wait(10)
    assert [p for p, _ in journal.replay()] == list(range(1, 9))


def test_positions_run_on_across_rotations(open_journal: Opener) -> None:
    journal = open_journal()
    journal.append(batch("a", 3))
    assert journal.rotate() == 3
    assert journal.rotate() == 3  # nothing since: no empty segment
    journal.append(batch("b", 2))
    assert journal.rotate() == 5
    assert journal.append(batch("c", 1)) == 6
    assert journal.stats().segments == 3
    assert [p for p, _ in journal.replay()] == [1, 2, 3, 4, 5, 6]
    assert list(journal.replay(after=4)) == [(5, ("b", 1)), (6, ("c", 0))]


def test_drop_before_deletes_only_segments_entirely_at_or_before_it(open_journal: Opener) -> None:
    journal = open_journal()
    for tag in "abc":
        journal.append(batch(tag, 10))
        journal.rotate()
    journal.append(batch("d", 5))  # segments start at 0, 10, 20, 30
    journal.drop_before(19)
    assert journal.stats().segments == 3
    assert [p for p, _ in journal.replay(after=19)] == list(range(20, 36))
    journal.drop_before(1000)  # the active segment always stays
    assert journal.stats().segments == 1
    assert [p for p, _ in journal.replay(after=30)] == list(range(31, 36))


def test_on_durable_fires_exactly_once_per_append_in_append_order(open_journal: Opener) -> None:
    journal = open_journal()
    fired: list[int] = []
    for i in range(50):
        journal.append(batch(i, i % 4), lambda i=i: fired.append(i))  # some appends are empty
    journal.close()
    assert fired == list(range(50))


def test_concurrent_appends_from_many_threads_are_all_replayed_at_their_positions(open_journal: Opener) -> None:
    journal = open_journal()
    returned: dict[tuple[int, int], int] = {}

    def shard(n: int) -> None:
        for k in range(200):
            returned[n, k] = journal.append([(n, k, i) for i in range(3)])

    threads = [threading.Thread(target=shard, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    journal.close()
    replayed = dict(journal.replay())
    assert sorted(replayed) == list(range(1, 8 * 200 * 3 + 1))
    for (n, k), end in returned.items():
        assert [replayed[end - 2], replayed[end - 1], replayed[end]] == [(n, k, 0), (n, k, 1), (n, k, 2)]


def test_reopening_after_close_continues_positions_and_keeps_records(open_journal: Opener) -> None:
    journal = open_journal()
    journal.append(batch("a", 3))
    journal.rotate()
    journal.append(batch("b", 2))
    journal.close()
    reopened = open_journal()
    assert reopened.position() == 5
    assert reopened.recovery_report.clean
    assert reopened.append(batch("c", 1)) == 6
    assert [r for _, r in reopened.replay()] == [*batch("a", 3), *batch("b", 2), ("c", 0)]


def test_append_after_close_is_refused(open_journal: Opener) -> None:
    journal = open_journal()
    journal.close()
    with pytest.raises(JournalClosed):
        journal.append([1])


def test_stats_count_appends_records_and_bytes(open_journal: Opener) -> None:
    journal = open_journal()
    journal.append(batch("a", 3))
    journal.append(batch("b", 2))
    journal.close()
    stats = journal.stats()
    assert (stats.appends, stats.records, stats.position) == (2, 5, 5)
    assert stats.bytes == len(encode_records(batch("a", 3))) + len(encode_records(batch("b", 2)))
    assert stats.fsync_buckets[-1] == (float("inf"), stats.fsyncs)


# -- file journal only ---------------------------------------------------------


def last_segment(directory: Path) -> Path:
    return max(directory.glob("journal-*.log"))


def test_torn_final_record_is_cut_off_and_reported_on_reopen(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with FileJournal(tmp_path) as journal:
        journal.append(batch("a", 5))
    segment = last_segment(tmp_path)
    whole = segment.read_bytes()
    last = len(encode_record(("a", 4)))
    for cut in range(1, last):
        segment.write_bytes(whole[:-cut])
        with caplog.at_level(logging.WARNING, logger="cascade.journal"), FileJournal(tmp_path) as reopened:
            assert reopened.position() == 4
            [issue] = reopened.recovery_report.issues
            assert (issue.reason, issue.action, issue.offset) == ("torn", "truncated", len(whole) - last)
            assert issue.dropped_bytes == last - cut
            assert segment.stat().st_size == len(whole) - last
            assert reopened.append([("b", 0)]) == 5
        assert "cut" in caplog.text
        with FileJournal(tmp_path) as again:
            assert again.recovery_report.clean
            assert [r for _, r in again.replay()] == [*batch("a", 4), ("b", 0)]
        segment.write_bytes(whole)


def test_zero_filled_tail_is_cut_off_like_a_torn_one(tmp_path: Path) -> None:
    with FileJournal(tmp_path) as journal:
        journal.append(batch("a", 5))
    segment = last_segment(tmp_path)
    with segment.open("ab") as f:
        f.write(bytes(8192))
    with FileJournal(tmp_path) as reopened:
        assert reopened.position() == 5
        [issue] = reopened.recovery_report.issues
        assert (issue.reason, issue.midstream, issue.dropped_bytes) == ("bad-length", False, 8192)


def test_corruption_inside_the_last_segment_keeps_the_valid_prefix_and_a_copy(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with FileJournal(tmp_path) as journal:
        for i in range(10):
            journal.append([("r", i)])
    segment = last_segment(tmp_path)
    data = bytearray(segment.read_bytes())
    frame = len(encode_record(("r", 0)))
    data[3 * frame + 10] ^= 0x01  # inside record 4's payload
    segment.write_bytes(bytes(data))
    with caplog.at_level(logging.ERROR, logger="cascade.journal"), FileJournal(tmp_path) as reopened:
        assert reopened.position() == 3
        [issue] = reopened.recovery_report.issues
        assert (issue.reason, issue.midstream) == ("corrupt", True)
    assert "LOST" in caplog.text
    [copy] = tmp_path.glob("*.corrupt-*")
    assert copy.read_bytes() == bytes(data)


def test_corruption_in_an_older_segment_stops_replay_there_loudly(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with FileJournal(tmp_path) as journal:
        journal.append(batch("a", 5))
        journal.rotate()
        journal.append(batch("b", 5))
    first = tmp_path / segment_name(0)
    data = bytearray(first.read_bytes())
    data[-3] ^= 0x10  # last record of the first segment
    first.write_bytes(bytes(data))
    with FileJournal(tmp_path) as reopened:
        assert reopened.position() == 10
        with caplog.at_level(logging.ERROR, logger="cascade.journal"):
            assert [p for p, _ in reopened.replay()] == [1, 2, 3, 4]
        [issue] = reopened.recovery_report.issues
        assert (issue.segment, issue.action, issue.reason) == (segment_name(0), "replay stopped", "corrupt")
    assert "REPLAY STOPPED" in caplog.text


class GatedSync:
    """fdatasync that holds the writer inside its first call until released."""

    def __init__(self) -> None:
        self.entered, self.release, self.calls = threading.Event(), threading.Event(), 0

    def __call__(self, fd: int) -> None:
        self.calls += 1
        self.entered.set()
        assert self.release.wait(30)
        os.fdatasync(fd)


def test_group_commit_covers_everything_that_arrived_during_an_fsync_with_one_more(tmp_path: Path) -> None:
    sync = GatedSync()
    journal = FileJournal(tmp_path, "batch", fdatasync=sync)
    fired = []
    journal.append([("first",)], lambda: fired.append(0))
    assert sync.entered.wait(10)

    def shard(n: int) -> None:
        for k in range(250):
            journal.append([(n, k)], lambda: fired.append(1))

    threads = [threading.Thread(target=shard, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert fired == []  # nothing acknowledged while the first fsync is in flight
    sync.release.set()
    journal.close()
    stats = journal.stats()
    assert stats.appends == 2001
    assert stats.fsyncs == 2
    assert len(fired) == 2001


def test_with_a_sync_interval_appends_that_come_faster_share_one_sync_and_close_does_not_wait(
        tmp_path: Path) -> None:
    journal = FileJournal(tmp_path, "batch", sync_interval_s=1.0)
    first = threading.Event()
    journal.append([("first",)], first.set)  # after a quiet spell: synced at once
    assert first.wait(10)
    fired: list[int] = []
    threads = [threading.Thread(target=lambda n=n: [journal.append([(n, k)], lambda: fired.append(1))
                                                   for k in range(25)]) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    journal.close()  # the interval is not waited out: everything queued is synced now
    stats = journal.stats()
    assert (stats.appends, stats.fsyncs, len(fired)) == (101, 2, 100)


def test_a_sync_interval_spaces_the_syncs_and_every_append_is_acknowledged(tmp_path: Path) -> None:
    began: list[float] = []

    def timed_sync(fd: int) -> None:
        began.append(time.perf_counter())
        os.fdatasync(fd)

    interval = 0.02
    journal = FileJournal(tmp_path, "batch", sync_interval_s=interval, fdatasync=timed_sync)
    acked = threading.Semaphore(0)
    for k in range(300):
        journal.append([("r", k)], acked.release)
        if k % 30 == 0:
            assert acked.acquire(timeout=10)  # now and then a writer waits for its answer, as clients do
    assert all(acked.acquire(timeout=10) for _ in range(300 - 10))
    journal.close()
    assert len(began) >= 2
    assert min(b - a for a, b in zip(began, began[1:])) >= interval


def test_always_syncs_once_per_append_and_acks_only_after_its_sync(tmp_path: Path) -> None:
    synced_sizes: list[int] = []

    def recording_sync(fd: int) -> None:
        os.fdatasync(fd)
        synced_sizes.append(os.fstat(fd).st_size)

    journal = FileJournal(tmp_path, "always", fdatasync=recording_sync)
    seen: list[tuple[int, int]] = []
    end = 0
    for i in range(20):
        end += len(encode_records(batch(i, 3)))
        journal.append(batch(i, 3), lambda end=end: seen.append((end, max(synced_sizes, default=0))))
    journal.close()
    assert journal.stats().fsyncs == 20
    assert len(seen) == 20
    assert all(synced >= needed for needed, synced in seen)


def test_batch_acks_only_after_a_sync_covering_the_records(tmp_path: Path) -> None:
    synced_sizes: list[int] = []

    def recording_sync(fd: int) -> None:
        os.fdatasync(fd)
        synced_sizes.append(os.fstat(fd).st_size)

    journal = FileJournal(tmp_path, "batch", fdatasync=recording_sync)
    seen: list[tuple[int, int]] = []
    end = 0
    for i in range(200):
        end += len(encode_records(batch(i, 2)))
        journal.append(batch(i, 2), lambda end=end: seen.append((end, max(synced_sizes, default=0))))
    journal.close()
    assert len(seen) == 200
    assert all(synced >= needed for needed, synced in seen)


def test_off_acks_once_written_without_any_fsync_until_close(tmp_path: Path) -> None:
    journal = FileJournal(tmp_path, "off")
    written = threading.Event()
    journal.append(batch("a", 3))
    journal.append(batch("b", 3), written.set)
    assert written.wait(10)
    assert journal.stats().fsyncs == 0
    assert last_segment(tmp_path).stat().st_size == len(encode_records(batch("a", 3) + batch("b", 3)))
    journal.close()
    assert journal.stats().fsyncs == 1


def test_appends_block_while_more_than_max_pending_bytes_are_queued(tmp_path: Path) -> None:
    sync = GatedSync()
    limit = 10_000
    journal = FileJournal(tmp_path, "batch", max_pending_bytes=limit, fdatasync=sync)
    first = [b"x" * 900]
    journal.append(first)
    assert sync.entered.wait(10)  # the writer is stuck in its first fsync from here on
    record = [b"y" * 990]
    fitting = (limit - len(encode_records(first))) // len(encode_records(record))
    for _ in range(fitting):
        journal.append(record)  # all fit under the limit: none may block
    assert journal.stats().pending_bytes <= limit
    done: list[int] = []
    blocked = threading.Thread(target=lambda: done.append(journal.append(record)))
    blocked.start()
    blocked.join(timeout=0.3)  # asserting that progress does NOT happen needs some time to pass
    assert blocked.is_alive() and done == []
    assert journal.stats().pending_bytes <= limit
    sync.release.set()
    blocked.join()
    journal.close()
    assert done == [fitting + 2]
    assert journal.stats().backpressure_waits == 1


def test_a_failed_fsync_stops_acknowledging_and_refuses_further_writes(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    def broken_sync(fd: int) -> None:
        raise OSError(5, "Input/output error")

    journal = FileJournal(tmp_path, "batch", fdatasync=broken_sync)
    fired: list[int] = []
    with caplog.at_level(logging.CRITICAL, logger="cascade.journal"):
        journal.append([1], lambda: fired.append(1))
        journal.close()
    assert fired == []
    assert isinstance(journal.failure, OSError)
    with pytest.raises(JournalError, match="writer failed"):
        journal.append([2])
    assert "no further writes" in caplog.text


def test_segments_roll_over_by_size_and_replay_across_them(tmp_path: Path) -> None:
    with FileJournal(tmp_path, segment_bytes=1000) as journal:
        for i in range(100):
            written = threading.Event()  # one append per write group, so groups cannot hide the rollover
            journal.append(batch(i, 5), written.set)
            assert written.wait(10)
    assert len(list(tmp_path.glob("journal-*.log"))) > 5
    with FileJournal(tmp_path, segment_bytes=1000) as reopened:
        assert reopened.position() == 500
        assert [r for _, r in reopened.replay()] == [r for i in range(100) for r in batch(i, 5)]


def test_segment_files_are_named_by_their_starting_position_and_dropped_as_files(tmp_path: Path) -> None:
    with FileJournal(tmp_path) as journal:
        journal.append(batch("a", 7))
        assert journal.rotate() == 7
        journal.append(batch("b", 1))
        assert sorted(p.name for p in tmp_path.glob("journal-*.log")) == [segment_name(0), segment_name(7)]
        journal.drop_before(7)
        assert [p.name for p in tmp_path.glob("journal-*.log")] == ["journal-00000000000000000007.log"]


def test_a_second_journal_on_the_same_directory_is_refused(tmp_path: Path) -> None:
    with FileJournal(tmp_path):
        with pytest.raises(JournalError, match="in use"):
            FileJournal(tmp_path)
    FileJournal(tmp_path).close()  # released on close


def test_an_unknown_fsync_mode_is_refused_naming_the_choices(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="'sometimes' is not allowed; use one of batch, always, off"):
        FileJournal(tmp_path, "sometimes")


CHILD = """
import sys
sys.path.insert(0, sys.argv[1])
from cascade.storage.journal import FileJournal
journal = FileJournal(sys.argv[2], "batch")
while True:
    first = journal.position() + 1
    end = journal.append([("r", p) for p in range(first, first + 10)], lambda e=first + 9: print(e, flush=True))
    assert end == first + 9
"""


def test_kill_9_mid_stream_loses_no_acknowledged_record(tmp_path: Path) -> None:
    root = str(Path(__file__).resolve().parent.parent)
    acked = 0
    for _ in range(3):
        child = subprocess.Popen([sys.executable, "-c", CHILD, root, str(tmp_path)], stdout=subprocess.PIPE, text=True)
        assert child.stdout is not None
        for _, line in zip(range(300), child.stdout):  # kill once 300 more appends are acknowledged
            acked = max(acked, int(line))
        child.send_signal(signal.SIGKILL)
        child.communicate()
        with FileJournal(tmp_path) as reopened:
            replayed = list(reopened.replay())
        assert [p for p, _ in replayed] == list(range(1, len(replayed) + 1))
        assert all(record == ("r", position) for position, record in replayed)
        assert len(replayed) >= acked
