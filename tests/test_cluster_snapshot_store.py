"""Partition snapshot sets in a JetStream object store, against real nats-server
processes: uploads byte-identical sets front last, prunes to `keep`, offers
only complete sets, falls back past a corrupted one, and streams big files."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cascade.storage.files import list_snapshots, snapshot_path, verify_snapshot, write_snapshot
from nats_servers import nats_cluster, nats_server  # fixtures, used by name

pytestmark = pytest.mark.timeout(60)


def take(directory: Path, position: int, shards: int = 2, n: int = 50, size: int = 8) -> list[str]:
    """A set as SnapshotCoordinator writes one: shard files 1..shards, then the front (shard 0)."""
    paths = [write_snapshot(directory, shard, {"journal_position": position, "shard_position": position,
                                               "engine_shard": shard - 1, "counts": {"sends": n}},
                            ((shard, i, os.urandom(size)) for i in range(n))).path
             for shard in range(1, shards + 1)]
    front = write_snapshot(directory, 0, {"journal_position": position, "shard_position": position,
                                          "kind": "front", "shards": shards}, [("template", position)])
    return [front.path, *paths]


def snapshot_files(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir()) if p.name.startswith("snapshot-")}


def stores(urls: list[str], **options: Any) -> Iterator[Any]:
    from cascade.cluster.client import NatsThread
    from cascade.cluster.snapshot_store import SnapshotStore

    client = NatsThread(urls, name="snapshots")
    try:
        yield SnapshotStore(client, bucket="test-snapshots", timeout_s=20.0, **options).open()
    finally:
        client.close()


@pytest.fixture
def store(nats_server: Any) -> Iterator[Any]:
    yield from stores(nats_server.urls)


def test_an_uploaded_set_downloads_byte_identical_elsewhere_and_verifies(store: Any, tmp_path: Path) -> None:
    take(tmp_path / "a", 120)
    assert store.upload(3, str(tmp_path / "a")) == 120
    assert store.positions(3) == [120] and store.positions(4) == []
    assert store.download(3, str(tmp_path / "b")) == 120
    assert snapshot_files(tmp_path / "b") == snapshot_files(tmp_path / "a")
    assert len(snapshot_files(tmp_path / "b")) == 3
    for path in (tmp_path / "b").iterdir():
        verify_snapshot(path)
    assert store.download(4, str(tmp_path / "c")) is None  # partitions are apart


def test_nothing_to_upload_or_download_gives_none(store: Any, tmp_path: Path) -> None:
    assert store.upload(0, str(tmp_path / "missing")) is None
    (tmp_path / "empty").mkdir()
    assert store.upload(0, str(tmp_path / "empty")) is None
    assert store.positions(0) == [] and store.download(0, str(tmp_path / "d")) is None


def test_download_leaves_exactly_the_set_in_the_directory(store: Any, tmp_path: Path) -> None:
    take(tmp_path / "a", 40)
    store.upload(1, str(tmp_path / "a"))
    target = tmp_path / "b"
    take(target, 90)  # a newer set of someone else's: not this partition's state in the store
    Path(snapshot_path(target, 95, 1, ".tmp")).write_bytes(b"half")
    (target / "notes.txt").write_text("mine")
    assert store.download(1, str(target)) == 40
    assert sorted(snapshot_files(target)) == sorted(snapshot_files(tmp_path / "a"))
    assert (target / "notes.txt").read_text() == "mine"


def test_keep_prunes_the_partitions_older_sets_from_the_store(nats_server: Any, tmp_path: Path) -> None:
    for store in stores(nats_server.urls, keep=2):
        for position in (10, 20, 30):
            take(tmp_path / "a", position)
            assert store.upload(5, str(tmp_path / "a")) == position
        take(tmp_path / "other", 10)
        store.upload(6, str(tmp_path / "other"))
        assert store.positions(5) == [30, 20]
        assert not [n for n in names(store) if n.startswith("p5/snapshot-00000000000000000010")]
        assert store.positions(6) == [10]  # another partition's sets are its own


def names(store: Any) -> list[str]:
    return sorted(info.name for info in store.client.run(store.obs.list(ignore_deletes=True), 5))


def test_a_set_whose_front_object_is_missing_is_not_offered(store: Any, tmp_path: Path) -> None:
    take(tmp_path / "a", 10)
    store.upload(0, str(tmp_path / "a"))
    take(tmp_path / "a", 20)
    store.upload(0, str(tmp_path / "a"))
    store.client.run(store.obs.delete(f"p0/{os.path.basename(snapshot_path('', 20, 0))}"), 5)
    assert store.positions(0) == [10]
    assert store.download(0, str(tmp_path / "b")) == 10
    assert {n[:29] for n in snapshot_files(tmp_path / "b")} == {"snapshot-00000000000000000010"}


def test_a_local_set_without_its_front_or_failing_verification_is_not_uploaded(store: Any, tmp_path: Path) -> None:
    take(tmp_path / "a", 10)
    take(tmp_path / "a", 20)
    data = bytearray(Path(snapshot_path(tmp_path / "a", 20, 2)).read_bytes())
    data[len(data) // 2] ^= 0x55
    Path(snapshot_path(tmp_path / "a", 20, 2)).write_bytes(bytes(data))
    write_snapshot(tmp_path / "a", 1, {"journal_position": 30}, [])  # a set being written: no front yet
    assert store.upload(2, str(tmp_path / "a")) == 10
    assert store.positions(2) == [10]


def test_a_corrupted_object_makes_download_fall_back_to_the_older_set(store: Any, tmp_path: Path) -> None:
    take(tmp_path / "a", 10)
    store.upload(7, str(tmp_path / "a"))
    take(tmp_path / "a", 20)
    store.upload(7, str(tmp_path / "a"))
    name = f"p7/{os.path.basename(snapshot_path('', 20, 1))}"
    store.client.run(store.obs.put(name, b"\x07garbage" * 100), 5)  # a sound object holding a broken file
    assert store.positions(7) == [20, 10]
    target = tmp_path / "b"
    assert store.download(7, str(target)) == 10
    assert [s.journal_position for s in list_snapshots(target)] == [10]
    assert not [p for p in target.iterdir() if p.suffix == ".tmp"]


def test_a_set_that_vanishes_while_download_reads_it_gives_way_to_the_next(store: Any, tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    for position in (10, 20):
        take(tmp_path / "a", position)
        store.upload(0, str(tmp_path / "a"))
    stale = store._objects(0)
    for info in stale[20].values():  # another node's prune, after this one listed the store
        store.client.run(store.obs.delete(info.name), 5)
    listings = iter([stale])
    real = store._objects
    monkeypatch.setattr(store, "_objects", lambda partition: next(listings, None) or real(partition))
    assert store.download(0, str(tmp_path / "b")) == 10
    assert [s.journal_position for s in list_snapshots(tmp_path / "b")] == [10]


def test_an_unchanged_set_is_not_sent_again(store: Any, tmp_path: Path) -> None:
    take(tmp_path / "a", 10)
    store.upload(0, str(tmp_path / "a"))
    before = {n: store.client.run(store.obs.get_info(n), 5).nuid for n in names(store)}
    assert store.upload(0, str(tmp_path / "a")) == 10
    assert {n: store.client.run(store.obs.get_info(n), 5).nuid for n in names(store)} == before


def test_a_file_bigger_than_a_chunk_streams_in_chunks_and_round_trips(store: Any, tmp_path: Path) -> None:
    take(tmp_path / "a", 10, shards=1, n=3000, size=1000)  # about 3 MB in shard 1
    big = snapshot_path(tmp_path / "a", 10, 1)
    assert os.path.getsize(big) > 2 * (1 << 20)
    store.upload(0, str(tmp_path / "a"))
    info = store.client.run(store.obs.get_info(f"p0/{os.path.basename(big)}"), 5)
    assert info.chunks >= 3 and info.size == os.path.getsize(big)
    assert store.download(0, str(tmp_path / "b")) == 10
    assert snapshot_files(tmp_path / "b") == snapshot_files(tmp_path / "a")


def test_a_three_server_cluster_with_three_replicas_holds_the_sets(nats_cluster: Any, tmp_path: Path) -> None:
    for store in stores(nats_cluster.urls, replicas=3):
        status = store.client.run(store.obs.status(), 5)
        assert status.replicas == 3
        take(tmp_path / "a", 10)
        take(tmp_path / "a", 20)
        assert store.upload(1, str(tmp_path / "a")) == 20
        assert store.positions(1) == [20]
        assert store.download(1, str(tmp_path / "b")) == 20
        assert snapshot_files(tmp_path / "b") == {n: d for n, d in snapshot_files(tmp_path / "a").items()
                                                  if n.startswith("snapshot-00000000000000000020")}
