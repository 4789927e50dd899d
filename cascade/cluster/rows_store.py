"""Campaign rows files in a JetStream object store, so every owner of a partition can read them.

A cluster campaign is cut into one part per partition (cluster/campaigns.py);
each part's rows file is put here before any partition journals the part,
under the file's own name (`cmp_<id>.p<partition>.rows`). The partition's
owner fetches it into its campaign directory the first time its fan-out
reads the part (`CampaignBook.local_rows`), whichever node wrote it and
however often the partition has changed owner since; the part's end deletes
it. The bucket is replicated like the journals (`replicas`), so an
acknowledged campaign survives the node that took the upload.

Every call but `drop` blocks its thread (never the NATS loop) for at most `timeout_s`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os

from nats.js import api
from nats.js.errors import BucketNotFoundError, NotFoundError
from nats.js.object_store import ObjectStore

from .client import NatsThread
from .transient import retried

__all__ = ["RowsStore"]

log = logging.getLogger("cascade.cluster.rows")


class RowsStore:
    def __init__(self, client: NatsThread, *, bucket: str, replicas: int = 1, timeout_s: float = 120.0) -> None:
        self.client, self.bucket, self.replicas, self.timeout_s = client, bucket, replicas, timeout_s
        self._chunk = min(256 << 10, client.nc.max_payload - 4096)
        self._obs: ObjectStore | None = None
        self._deleting: set[asyncio.Task[None]] = set()

    def open(self) -> RowsStore:
        """Bind to the bucket, creating it (`replicas`) if it does not exist."""
        self._obs = self.client.run(self._open(), self.timeout_s)
        return self

    async def _open(self) -> ObjectStore:
        what, js = f"rows bucket {self.bucket}: open", self.client.js
        try:
            return await retried(lambda: js.object_store(self.bucket), what, self.timeout_s)
        except BucketNotFoundError:
            return await retried(lambda: js.create_object_store(self.bucket, replicas=self.replicas), what,
                                 self.timeout_s)

    @property
    def obs(self) -> ObjectStore:
        if self._obs is None:
            raise RuntimeError("RowsStore.open() has not been called")
        return self._obs

    def put(self, path: str) -> str:
        """The file at `path`, stored under its base name (which it returns)."""
        name = os.path.basename(path)
        meta = api.ObjectMeta(name=name, options=api.ObjectMetaOptions(max_chunk_size=self._chunk))
        with open(path, "rb") as f:
            self.client.run(self.obs.put(name, f, meta), self.timeout_s)
        return name

    def fetch(self, name: str, directory: str) -> None:
        """Object `name` into `directory/name` (through `.tmp`, digest checked by the client, fsynced);
        FileNotFoundError when the bucket does not hold it."""
        path = os.path.join(directory, name)
        tmp = path + ".tmp"
        try:
            with open(tmp, "wb") as f:
                try:
                    self.client.run(self.obs.get(name, writeinto=f), self.timeout_s)
                except NotFoundError:
                    raise FileNotFoundError(f"campaign rows {name} are not in bucket {self.bucket}") from None
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)

    def drop(self, name: str) -> None:
        """Delete object `name`, in the background: called from any thread, the NATS loop's too (a
        journal's durability callback), so it only schedules the delete and never waits."""
        self.client.call_soon(self._schedule_delete, name)

    def _schedule_delete(self, name: str) -> None:
        task = asyncio.ensure_future(self._delete(name))
        self._deleting.add(task)  # the loop holds only weak references to tasks
        task.add_done_callback(self._deleting.discard)

    async def _delete(self, name: str) -> None:
        try:
            await asyncio.wait_for(self.obs.delete(name), self.timeout_s)
        except NotFoundError:
            pass
        except Exception:  # noqa: BLE001 - only space: the campaign part has ended either way
            log.warning("campaign rows %s were not deleted from bucket %s", name, self.bucket, exc_info=True)
