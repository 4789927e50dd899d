"""Partition snapshot sets in a replicated JetStream object store, for whichever node owns the partition next.

Layout: bucket `cascade-snapshots`, one object a snapshot file, named
`p<N>/<file name>` (`snapshot-<P:020d>-shard<NN>.msgpack`, as on disk, see
storage/files.py). The front object (shard 00) carries the set's shard count
in its description, `{"shards": n}`, so a listing tells which sets are
complete without reading any file.

Invariants: the front object is uploaded last and deleted first, so a set
whose front object is in the store has all its shard objects too, and a set
without one is never offered. A set is only uploaded after every file of it
verified on disk, and only downloaded into place after every file verified
again (a set that fails falls back to the next older complete one;
an unsupported format is raised instead, as recovery does: falling back past
newer data would lose it). After an upload the partition keeps its newest
`keep` complete sets in the store; older objects are deleted.

Files stream in chunks both ways (nats-py reads a file object with
`readinto` and writes a download to one chunk by chunk, checking the
object's SHA-256), so a set of hundreds of MB never sits in memory. Every
object operation waits at most `timeout_s` (a `TimeoutError`, like a full
disk, is raised, not fallen back from: it says nothing about the data); an
object already in the store with the same size and digest is not sent again.
A set whose objects vanish while it is read (pruned by another node) gives
way to the next, after listing the store again if need be.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import logging
import os
import re

from nats.js import api
from nats.js.errors import BucketNotFoundError, DigestMismatchError, NotFoundError
from nats.js.object_store import ObjectStore

from ..storage.codec import CorruptSnapshot, UnsupportedFormat
from ..storage.files import SnapshotSet, list_snapshots, snapshot_path, verify_snapshot
from .client import NatsThread
from .transient import retried

__all__ = ["SnapshotStore"]

log = logging.getLogger("cascade.cluster.snapshots")
_OBJECT = re.compile(r"^p(\d+)/snapshot-(\d{20})-shard(\d+)\.msgpack$")
_FILE = re.compile(r"^snapshot-\d{20}-shard\d+\.(msgpack|tmp)$")
_READ = 1 << 20
PASSES = 3  # listings tried by download when objects vanish under it (a pruning upload of a deposed owner)

Objects = dict[int, dict[int, api.ObjectInfo]]  # position -> shard -> object


def _shards(front: api.ObjectInfo) -> int | None:
    try:
        return int(json.loads(front.description or "")["shards"])
    except (ValueError, KeyError, TypeError):
        return None


def _complete(objects: Objects) -> list[tuple[int, int]]:
    """(position, shard count) of every complete set, newest first."""
    sets = []
    for position in sorted(objects, reverse=True):
        front = objects[position].get(0)
        shards = None if front is None else _shards(front)
        if shards is not None and set(range(1, shards + 1)) <= objects[position].keys():
            sets.append((position, shards))
    return sets


def _local_set(directory: str) -> tuple[SnapshotSet, int] | None:
    """The newest set in `directory` whose front and every shard it names verify; with its shard count."""
    if not os.path.isdir(directory):
        return None
    for candidate in list_snapshots(directory):
        if 0 not in candidate.paths:
            continue  # the front is written last: this set is still being written, or was cut short
        try:
            shards = _verify_set(candidate.paths, candidate.journal_position)
            return candidate, shards
        except (CorruptSnapshot, OSError, KeyError, ValueError, TypeError) as exc:
            log.error("snapshot set at journal position %d in %s is unusable; not uploaded: %s",
                      candidate.journal_position, directory, exc)
    return None


def _verify_set(paths: dict[int, str], position: int) -> int:
    """Verify the front and every shard file it names (UnsupportedFormat passes through); the shard count."""
    header = verify_snapshot(paths[0], decode=False).header
    shards = int(header["shards"])
    missing = set(range(1, shards + 1)) - paths.keys()
    if missing or header["journal_position"] != position:
        raise CorruptSnapshot(paths[0], 0, f"the set at {position} lacks shard files {sorted(missing)}")
    for shard in range(1, shards + 1):
        verify_snapshot(paths[shard], decode=False)
    return shards


def _digest(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(_READ):
            h.update(block)
    return "SHA-256=" + base64.urlsafe_b64encode(h.digest()).decode()


class SnapshotStore:
    """Snapshot sets of every partition in one object store bucket; every method blocks (call off the loop)."""

    def __init__(self, client: NatsThread, *, bucket: str = "cascade-snapshots", replicas: int = 1, keep: int = 2,
                 timeout_s: float = 60.0) -> None:
        if keep < 1:
            raise ValueError(f"keep {keep} is not allowed; keep at least 1 snapshot set")
        self.client, self.bucket, self.replicas, self.keep, self.timeout_s = client, bucket, replicas, keep, timeout_s
        self._chunk = min(_READ, client.nc.max_payload - 4096)
        self._obs: ObjectStore | None = None

    @property
    def obs(self) -> ObjectStore:
        if self._obs is None:
            raise RuntimeError("SnapshotStore.open() has not been called")
        return self._obs

    def open(self) -> SnapshotStore:
        """Bind to the bucket, creating it (`replicas`) if it does not exist."""
        self._obs = self.client.run(self._open(), self.timeout_s)
        return self

    async def _open(self) -> ObjectStore:
        what = f"snapshot bucket {self.bucket}: open"
        try:
            return await retried(lambda: self.client.js.object_store(self.bucket), what, self.timeout_s)
        except BucketNotFoundError:
            return await retried(lambda: self.client.js.create_object_store(self.bucket, replicas=self.replicas),
                                 what, self.timeout_s)

    def _objects(self, partition: int) -> Objects:
        objects: Objects = {}
        for info in self.client.run(self._list(), self.timeout_s):
            m = _OBJECT.match(info.name)
            if m and int(m.group(1)) == partition and not info.deleted:
                objects.setdefault(int(m.group(2)), {})[int(m.group(3))] = info
        return objects

    async def _list(self) -> list[api.ObjectInfo]:
        try:
            return await self.obs.list(ignore_deletes=True)
        except NotFoundError:  # nats-py's answer for an empty bucket
            return []

    def positions(self, partition: int) -> list[int]:
        """Journal positions of the partition's complete sets in the store, newest first."""
        return [position for position, _ in _complete(self._objects(partition))]

    def upload(self, partition: int, directory: str) -> int | None:
        """Upload the newest verified set of `directory`, front last, then prune; its position, or None."""
        found = _local_set(directory)
        if found is None:
            return None
        local, shards = found
        objects = self._objects(partition).get(local.journal_position, {})
        for shard in [*range(1, shards + 1), 0]:
            path = local.paths[shard]
            name = f"p{partition}/{os.path.basename(path)}"
            there = objects.get(shard)
            if there is not None and there.size == os.path.getsize(path) and there.digest == _digest(path) \
                    and (shard != 0 or _shards(there) == shards):
                continue  # already there (an upload of this set, or one cut short before its front)
            meta = api.ObjectMeta(name=name, description=json.dumps({"shards": shards}) if shard == 0 else None,
                                  options=api.ObjectMetaOptions(max_chunk_size=self._chunk))
            self.client.run(retried(lambda: self._put(name, path, meta), f"upload of {name}", self.timeout_s),
                            2 * self.timeout_s)
        log.info("snapshot set at journal position %d of partition %d uploaded to %s (%d shards)",
                 local.journal_position, partition, self.bucket, shards)
        self._prune(partition)
        return local.journal_position

    async def _put(self, name: str, path: str, meta: api.ObjectMeta) -> None:
        # From the start at each try: a stream without a leader for a moment (a fresh R3 bucket, a
        # leader moving) answers "no responders" to a chunk, and the set is worth the wait.
        with open(path, "rb") as f:
            await self.obs.put(name, f, meta)

    def _prune(self, partition: int) -> None:
        objects = self._objects(partition)
        kept = _complete(objects)[:self.keep]
        if not kept:
            return
        for position in sorted(p for p in objects if p < kept[-1][0]):
            for shard in sorted(objects[position]):  # the front (0) first: the set stops being offered at once
                with contextlib.suppress(NotFoundError):
                    self.client.run(self.obs.delete(objects[position][shard].name), self.timeout_s)

    def download(self, partition: int, directory: str) -> int | None:
        """Make `directory` hold exactly the partition's newest complete set that verifies; its position, or None."""
        os.makedirs(directory, exist_ok=True)
        for entry in os.listdir(directory):
            if _FILE.match(entry):
                os.unlink(os.path.join(directory, entry))
        for _ in range(PASSES):
            vanished = False
            objects = self._objects(partition)
            for position, shards in _complete(objects):
                try:
                    self._fetch(objects[position], position, shards, directory)
                    return position
                except (UnsupportedFormat, OSError, TimeoutError):  # newer data, or no disk or network: not bad data
                    self._remove(directory, position, shards)
                    raise
                except NotFoundError as exc:
                    vanished = True
                    log.warning("snapshot set at journal position %d of partition %d went from the store while "
                                "being read (%r); trying the next", position, partition, exc)
                except (CorruptSnapshot, DigestMismatchError, KeyError, ValueError, TypeError) as exc:
                    log.error("SNAPSHOT SET AT JOURNAL POSITION %d OF PARTITION %d IN %s FAILED VERIFICATION; "
                              "falling back to the one before: %r", position, partition, self.bucket, exc)
                self._remove(directory, position, shards)
            if not vanished:
                break
        return None

    def _fetch(self, objects: dict[int, api.ObjectInfo], position: int, shards: int, directory: str) -> None:
        """Each object to its file (through `.tmp`, verified, fsynced, renamed), the front last."""
        for shard in [*range(1, shards + 1), 0]:
            tmp = snapshot_path(directory, position, shard, ".tmp")
            try:
                with open(tmp, "wb") as f:
                    self.client.run(self.obs.get(objects[shard].name, writeinto=f), self.timeout_s)
                    f.flush()
                    os.fsync(f.fileno())
                header = verify_snapshot(tmp, decode=False).header  # checks its name's shard and position too
                if shard == 0 and header["shards"] != shards:
                    raise CorruptSnapshot(tmp, 0, f"the front names {header['shards']} shards, its object {shards}")
                os.replace(tmp, snapshot_path(directory, position, shard))
            finally:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)  # the renames must survive a crash
        finally:
            os.close(fd)

    def _remove(self, directory: str, position: int, shards: int) -> None:
        for shard in range(shards + 1):
            for suffix in (".msgpack", ".tmp"):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(snapshot_path(directory, position, shard, suffix))
