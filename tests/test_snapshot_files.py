"""Snapshot files on disk: atomic streamed writes, verification, fallback, pruning, the CLI."""

from __future__ import annotations

import json
import logging
import os
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cascade.durability.cli import main
from cascade.storage.codec import VERSION, CorruptSnapshot, UnsupportedFormat, encode_record, encode_records
from cascade.storage.files import (
    list_snapshots,
    newest_valid_set,
    prune_snapshots,
    read_snapshot,
    snapshot_path,
    verify_snapshot,
    write_snapshot,
)
from cascade.storage.journal import FileJournal


def sends(n: int, tag: int = 0) -> Iterator[tuple[Any, ...]]:
    for i in range(n):
        yield (3, 1234567890123 + i, tag, 2, 1764200000.123)


def take(directory: Path, position: int, shards: int = 2, n: int = 100) -> None:
    for shard in range(shards):
        write_snapshot(directory, shard, {"journal_position": position, "counts": {"sends": n}}, sends(n, shard))


def flip_byte(path: str | Path, offset: int) -> None:
    data = bytearray(Path(path).read_bytes())
    data[offset] ^= 0x20
    Path(path).write_bytes(bytes(data))


def test_a_written_snapshot_reads_back_its_header_and_records(tmp_path: Path) -> None:
    info = write_snapshot(tmp_path, 1, {"journal_position": 77, "counts": {"sends": 3}, "clock": 5.0}, sends(3))
    assert info.path == snapshot_path(tmp_path, 77, 1) == str(tmp_path / "snapshot-00000000000000000077-shard01.msgpack")
    assert (info.shard, info.journal_position, info.records) == (1, 77, 3)
    assert info.bytes == os.path.getsize(info.path)
    header, body = read_snapshot(info.path)
    assert header["format"] == "cascade-snapshot" and header["version"] == VERSION
    assert (header["shard"], header["journal_position"], header["counts"], header["clock"]) == (1, 77, {"sends": 3}, 5.0)
    assert list(body) == list(sends(3))
    assert verify_snapshot(info.path).records == 3


def test_an_empty_shard_still_writes_a_verifiable_snapshot(tmp_path: Path) -> None:
    info = write_snapshot(tmp_path, 0, {"journal_position": 0}, [])
    assert verify_snapshot(info.path).records == 0


def test_records_are_streamed_to_disk_not_built_in_memory_first(tmp_path: Path) -> None:
    tmp = snapshot_path(tmp_path, 5, 0, ".tmp")
    sizes_seen: list[int] = []

    def records() -> Iterator[tuple[Any, ...]]:
        for i, record in enumerate(sends(300_000)):
            if i == 250_000:
                sizes_seen.append(os.path.getsize(tmp))
            yield record

    write_snapshot(tmp_path, 0, {"journal_position": 5}, records())
    assert sizes_seen[0] > 5_000_000  # most of the snapshot was already on disk
    assert not os.path.exists(tmp)


def test_a_failed_write_leaves_neither_a_snapshot_nor_a_tmp_file(tmp_path: Path) -> None:
    def records() -> Iterator[tuple[Any, ...]]:
        yield from sends(200_000)
        raise RuntimeError("shard went away")

    with pytest.raises(RuntimeError):
        write_snapshot(tmp_path, 0, {"journal_position": 5}, records())
    assert list(tmp_path.iterdir()) == []


def test_an_interrupted_write_is_invisible_and_its_tmp_is_pruned(tmp_path: Path) -> None:
    take(tmp_path, 10)
    leftover = Path(snapshot_path(tmp_path, 20, 0, ".tmp"))
    leftover.write_bytes(encode_records(list(sends(50))))  # what kill -9 mid-write leaves
    assert [s.journal_position for s in list_snapshots(tmp_path)] == [10]
    assert newest_valid_set(tmp_path, 2) is not None
    assert str(leftover) in prune_snapshots(tmp_path, keep=1)
    assert not leftover.exists()


def test_a_truncated_snapshot_fails_when_its_records_are_exhausted(tmp_path: Path) -> None:
    info = write_snapshot(tmp_path, 0, {"journal_position": 5}, sends(1000))
    data = Path(info.path).read_bytes()
    trailer = len(encode_record({"trailer": True, "records": 1000, "checksum": 0}))
    for cut in (1, trailer, trailer + 10, len(data) // 2):
        Path(info.path).write_bytes(data[:-cut])
        header, body = read_snapshot(info.path)
        with pytest.raises(CorruptSnapshot) as failure:
            list(body)
        assert failure.value.path == info.path


def test_a_flipped_byte_anywhere_in_the_body_or_trailer_is_caught(tmp_path: Path) -> None:
    info = write_snapshot(tmp_path, 0, {"journal_position": 5}, sends(50))
    data = Path(info.path).read_bytes()
    head = len(encode_record(read_snapshot(info.path)[0]))
    for offset in range(head, len(data), 7):
        Path(info.path).write_bytes(data)
        flip_byte(info.path, offset)
        with pytest.raises(CorruptSnapshot):
            verify_snapshot(info.path)


def test_a_set_failing_its_checksum_falls_back_to_the_previous_set_loudly(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    take(tmp_path, 10)
    take(tmp_path, 20)
    flip_byte(snapshot_path(tmp_path, 20, 1), 200)
    with caplog.at_level(logging.ERROR, logger="cascade.durability"):
        chosen = newest_valid_set(tmp_path, 2)
    assert chosen is not None and chosen.journal_position == 10
    assert chosen.paths == {0: snapshot_path(tmp_path, 10, 0), 1: snapshot_path(tmp_path, 10, 1)}
    assert "JOURNAL POSITION 20 FAILED VERIFICATION" in caplog.text


def test_a_set_missing_a_shard_is_skipped(tmp_path: Path) -> None:
    take(tmp_path, 10)
    take(tmp_path, 20, shards=1)
    chosen = newest_valid_set(tmp_path, 2)
    assert chosen is not None and chosen.journal_position == 10


def test_no_valid_set_at_all_gives_none(tmp_path: Path) -> None:
    assert newest_valid_set(tmp_path, 2) is None
    take(tmp_path, 10, shards=1)
    flip_byte(snapshot_path(tmp_path, 10, 0), 100)
    assert newest_valid_set(tmp_path, 1) is None


def write_raw(path: str, header: dict[str, Any], records: list[Any]) -> None:
    body = encode_records(records)
    trailer = {"trailer": True, "records": len(records), "checksum": zlib.crc32(body)}
    Path(path).write_bytes(encode_record(header) + body + encode_record(trailer))


def test_an_unknown_version_is_refused_naming_it_not_skipped(tmp_path: Path) -> None:
    take(tmp_path, 10, shards=1)
    future = {"format": "cascade-snapshot", "version": 9, "shard": 0, "journal_position": 20, "counts": {},
              "created_at": 1.0}
    write_raw(snapshot_path(tmp_path, 20, 0), future, [1, 2])
    with pytest.raises(UnsupportedFormat, match="version 9"):
        read_snapshot(snapshot_path(tmp_path, 20, 0))
    with pytest.raises(UnsupportedFormat, match="version 9"):
        newest_valid_set(tmp_path, 1)


def test_a_header_that_disagrees_with_the_file_name_is_corrupt(tmp_path: Path) -> None:
    info = write_snapshot(tmp_path, 0, {"journal_position": 10}, sends(3))
    os.rename(info.path, snapshot_path(tmp_path, 30, 0))
    with pytest.raises(CorruptSnapshot, match="header says shard 0 at 10"):
        verify_snapshot(snapshot_path(tmp_path, 30, 0))


def test_list_snapshots_groups_by_position_newest_first(tmp_path: Path) -> None:
    for position in (5, 100, 20):
        take(tmp_path, position, shards=3, n=2)
    sets = list_snapshots(tmp_path)
    assert [s.journal_position for s in sets] == [100, 20, 5]
    assert sorted(sets[0].paths) == [0, 1, 2]


def test_prune_keeps_the_newest_complete_sets(tmp_path: Path) -> None:
    for position in (10, 20, 30, 40):
        take(tmp_path, position)
    take(tmp_path, 50, shards=1)  # a failed round: not counted as a kept set
    removed = prune_snapshots(tmp_path, keep=2)
    assert sorted(removed) == sorted(snapshot_path(tmp_path, p, s) for p in (10, 20) for s in (0, 1))
    assert [s.journal_position for s in list_snapshots(tmp_path)] == [50, 40, 30]
    with pytest.raises(ValueError, match="keep at least 1"):
        prune_snapshots(tmp_path, keep=0)


def test_snapshot_of_a_million_records_stays_small_on_disk(tmp_path: Path) -> None:
    info = write_snapshot(tmp_path, 0, {"journal_position": 1}, sends(1_000_000))
    assert info.records == 1_000_000
    assert info.bytes / info.records < 40


# -- CLI -----------------------------------------------------------------------


def test_cli_verify_says_ok_with_counts(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    info = write_snapshot(tmp_path, 0, {"journal_position": 3}, sends(12))
    assert main(["verify", info.path]) == 0
    assert capsys.readouterr().out.strip() == f"ok: 12 records, {info.bytes} bytes"


def test_cli_verify_fails_with_the_reason(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    info = write_snapshot(tmp_path, 0, {"journal_position": 3}, sends(12))
    flip_byte(info.path, info.bytes - 5)
    assert main(["verify", info.path]) == 1
    err = capsys.readouterr().err
    assert "corrupt at byte" in err and info.path in err
    assert main(["verify", str(tmp_path / "missing.msgpack")]) == 1
    assert "No such file" in capsys.readouterr().err


def test_cli_verify_names_an_unsupported_version(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = str(tmp_path / "x.msgpack")
    write_raw(path, {"format": "cascade-snapshot", "version": VERSION + 1, "shard": 0, "journal_position": 0,
                     "counts": {}, "created_at": 1.0}, [])
    assert main(["verify", path]) == 1
    assert f"version {VERSION}" in capsys.readouterr().err  # the one this cascade reads


def test_cli_inspect_prints_header_counts_and_first_records(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    info = write_snapshot(tmp_path, 2, {"journal_position": 9, "counts": {"sends": 7}}, [("x" * 500,), *sends(6)])
    assert main(["inspect", info.path, "--records", "3"]) == 0
    out = capsys.readouterr().out
    header_json = out[len("header: ") : out.index("\nrecords:")]
    assert json.loads(header_json)["counts"] == {"sends": 7}
    assert "records: 7\n" in out and f"bytes: {info.bytes}\n" in out and "status: ok" in out
    lines = out.splitlines()
    first = lines[lines.index("first 3 records:") + 1 :]
    assert len(first) == 3 and first[0].endswith("...") and len(first[0]) < 200
    assert first[1] == "  [1] (3, 1234567890123, 0, 2, 1764200000.123)"


def test_cli_inspect_of_a_damaged_snapshot_shows_what_it_can_and_fails(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    info = write_snapshot(tmp_path, 0, {"journal_position": 9}, sends(20))
    Path(info.path).write_bytes(Path(info.path).read_bytes()[:-30])
    assert main(["inspect", info.path]) == 1
    out = capsys.readouterr().out
    assert "status: CORRUPT" in out and "first 5 records:" in out


def test_cli_reads_journal_segments_too(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with FileJournal(tmp_path / "j") as journal:
        journal.append([("a", i) for i in range(4)])
    [segment] = (tmp_path / "j").glob("journal-*.log")
    assert main(["verify", str(segment)]) == 0
    assert capsys.readouterr().out.startswith("ok: 4 records")
    with segment.open("ab") as f:
        f.write(b"\x05\x00\x00")
    assert main(["inspect", str(segment)]) == 1
    assert "status: torn" in capsys.readouterr().out


def test_cli_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert main(["frobnicate", "x"]) == 2
    assert "usage: cascade snapshot" in capsys.readouterr().err


# -- periodic snapshots of a running server ------------------------------------------------

async def test_an_idle_server_skips_its_periodic_snapshots_until_something_is_journaled(tmp_path: Path) -> None:
    from serverproc import config_text, eventually, free_port, running, snapshot_files

    from cascade.config import load_settings

    data = tmp_path / "data"
    config = tmp_path / "cascade.toml"
    config.write_text(config_text(data, free_port(), snapshot_interval_s=0.02, shards=2), encoding="utf-8")
    async with running(load_settings(config, environ={})) as (server, http):
        assert server.durability is not None and server.durability.coordinator is not None
        coordinator = server.durability.coordinator

        async def listing() -> list[dict[str, Any]]:
            body = await (await http.get("/v1/admin/snapshots")).json()
            return body["snapshots"]  # type: ignore[no-any-return]

        def files() -> list[tuple[str, int, int]]:
            return [(p.name, p.stat().st_ino, p.stat().st_mtime_ns) for p in snapshot_files(data)]

        async def skips_beyond(n: int) -> bool:
            return coordinator.skipped > n

        async def last_snapshot_time() -> float:
            text = await (await http.get("/metrics")).text()
            line = next(x for x in text.splitlines() if x.startswith("cascade_last_snapshot_timestamp_seconds "))
            return float(line.split()[1])

        # Start-up journals the manual clock, so the first period writes a set; then nothing happens.
        await eventually(lambda: skips_beyond(2), "periodic snapshots skipped on an idle server")
        sets, on_disk, taken = await listing(), files(), coordinator.taken
        assert len(sets) == 1 and taken == 1 and on_disk
        idle_since, skipped = time.time(), coordinator.skipped
        await eventually(lambda: skips_beyond(skipped + 10), "ten more idle periods")
        assert await listing() == sets and files() == on_disk and coordinator.taken == taken
        assert await last_snapshot_time() >= idle_since  # the newest set is still current: no stale alarm

        # Something journaled: the next period writes a new set, then idleness resumes.
        assert (await http.put("/v1/templates/t", json={"channels": [{"channel": "inapp"}]})).status == 201

        async def new_set() -> bool:
            now = await listing()
            return bool(now) and now[0]["journalPosition"] > sets[0]["journalPosition"] and coordinator.taken > taken

        await eventually(new_set, "a periodic snapshot after a write")
        taken, skipped = coordinator.taken, coordinator.skipped
        await eventually(lambda: skips_beyond(skipped + 5), "idle periods after the write")
        assert coordinator.taken == taken
