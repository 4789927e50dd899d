"""Campaigns in a cluster: the campaign routes' desk on any node.

`POST /v1/campaigns` on any node validates the rows as a single server
does, splitting them by the partition of each recipient into one rows file
per partition (campaign_parts.py). Each file goes into the rows bucket
(rows_store.py) first; then every partition that holds rows is asked, one
call per owner node, to journal its part (ops.py `campaign_create`:
idempotent, so a call retried after a lost answer or an owner change makes
one part). The 201 comes once every part is acknowledged by its journal's
quorum. From then on each part is an ordinary campaign of its partition:
its owner fans it out, and whoever owns the partition next finds the part
in the journal and the rows in the bucket, and resumes from the rows'
started bitmaps.

A creation that fails midway (an owner away past the wait) answers the
error and cancels the parts that were made, so no half campaign runs;
those cancelled parts stay visible under the campaign's id.

Reads gather every partition's parts (one call per node) and merge them
(`campaign_parts.merge`); a cancel goes to every partition.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable
from typing import Any

from ..campaigns import campaigns_of
from ..campaigns.book import Campaign, campaign_view
from ..campaigns.desk import newest_first_page
from ..campaigns.rows import Upload
from ..domain.errors import AlreadyFinished, NotFound, Overloaded
from .campaign_parts import PartitionedRows, merge
from .front import ClusterEngine
from .rows_store import RowsStore

__all__ = ["ClusterDesk", "node_campaign_stats"]

log = logging.getLogger("cascade.cluster.campaigns")


class ClusterDesk:
    def __init__(self, engine: ClusterEngine, directory: str, rows_store: Callable[[], RowsStore | None]) -> None:
        self.engine, self.directory, self._rows_store = engine, directory, rows_store
        self.background = engine.background

    def _store(self) -> RowsStore:
        store = self._rows_store()
        if store is None:
            raise Overloaded("this node is joining the cluster; retry shortly")
        return store

    def new_upload(self) -> Upload[Any]:
        self.engine.check_open()
        self._store()
        cid = "cmp_" + os.urandom(8).hex()
        return Upload(cid, PartitionedRows(os.path.join(self.directory, cid), cid, self.engine.partitions))

    async def create(self, upload: Upload[Any], rows: Any, template: str, scheduled_at: float | None,
                     name: str | None, data: bytes | None) -> Campaign:
        parts: dict[int, tuple[str, int]] = rows
        folder = os.path.join(self.directory, upload.id)
        loop = asyncio.get_running_loop()
        try:
            await self.engine.known_template(template)
            tpl = self.engine.templates.get(template)  # the version is fixed here, for every part
            store = self._store()
            await loop.run_in_executor(None, lambda: [store.put(os.path.join(folder, f)) for f, _ in parts.values()])
            now = self.engine.clock.now()
            at = now if scheduled_at is None else scheduled_at
            first = min(parts)  # the rejected rows are counted once, on the first part
            calls = [(p, "campaign_create", (tpl.id, tpl.version, upload.id, name, at, now, f, n,
                                             upload.rejected if p == first else 0, data))
                     for p, (f, n) in parts.items()]
            try:
                answers = await self.engine.many(calls)
            except BaseException:
                await self._undo(upload.id, list(parts), [f for f, _ in parts.values()])
                raise
        finally:
            for f, _ in parts.values():
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(os.path.join(folder, f))
            with contextlib.suppress(OSError):
                os.rmdir(folder)
        c, _ = merge(answers, self.engine.clock.now())
        return c

    async def _undo(self, cid: str, partitions: list[int], files: list[str]) -> None:
        """Best effort after a failed creation: cancel the parts that were made, drop the rows."""
        try:
            await self.engine.many([(p, "campaign_cancel", (cid,)) for p in partitions])
        except Exception:  # noqa: BLE001 - the creation's own error is the one answered
            log.error("campaign %s: a creation failed midway and its parts could not all be cancelled; "
                      "cancel it (DELETE /v1/campaigns/%s)", cid, cid, exc_info=True)
            return
        store = self._rows_store()
        if store is not None:
            def drop() -> None:
                for f in files:
                    store.drop(f)
            with contextlib.suppress(Exception):
                await asyncio.get_running_loop().run_in_executor(None, drop)

    async def _parts(self, cids: list[str] | None) -> dict[str, list[list[Any]]]:
        by_id: dict[str, list[list[Any]]] = {}
        for found in (await self.engine.every("campaign_parts", (cids,))).values():
            for part in found:
                by_id.setdefault(part[0], []).append(list(part))
        return by_id

    def _view(self, parts: list[list[Any]], metrics: bool = True) -> dict[str, Any]:
        c, totals = merge(parts, self.engine.clock.now())
        return campaign_view(c, self.engine.templates.version(c.template, c.version), totals, metrics)

    async def view(self, cid: str) -> dict[str, Any]:
        parts = (await self._parts([cid])).get(cid)
        if not parts:
            raise NotFound(f"campaign {cid!r} does not exist")
        return self._view(parts)

    async def page(self, status: str | None, limit: int, before: str | None) -> dict[str, Any]:
        now = self.engine.clock.now()
        merged = {cid: merge(parts, now) for cid, parts in (await self._parts(None)).items()}
        found = sorted((c for c, _ in merged.values() if status is None or c.status == status),
                       key=lambda c: (c.created_at, c.id), reverse=True)
        page, after = newest_first_page(found, limit, before)
        views = []
        for c in page:
            c_totals = merged[c.id][1]
            views.append(campaign_view(c, self.engine.templates.version(c.template, c.version), c_totals, False))
        return {"campaigns": views, "next": after}

    async def cancel(self, cid: str) -> dict[str, Any]:
        answers = await self.engine.many([(p, "campaign_cancel", (cid,)) for p in range(self.engine.partitions)])
        states = [a[0] for a in answers]
        if not any(states):
            raise NotFound(f"campaign {cid!r} does not exist")
        if 1 not in states:
            raise AlreadyFinished(f"campaign {cid} has already been cancelled")
        return await self.view(cid)


def node_campaign_stats(engine: ClusterEngine) -> dict[str, Any]:
    """/metrics' campaign figures of one node: its partitions' parts summed (by status, rows of each
    running campaign, sends started, fan-out rate). Prometheus sums nodes into the campaigns' totals;
    by status, a campaign counts once for each node holding a part of it."""
    by_status: dict[str, int] = {}
    rows: dict[str, list[int]] = {}
    started_total, rate = 0, 0.0
    for partition_engine in engine.local_engines():
        campaigns = campaigns_of(partition_engine)
        if campaigns is None:
            continue
        stats = campaigns.book.stats()
        for status, n in stats["by_status"].items():
            by_status[status] = by_status.get(status, 0) + n
        for cid, n_rows, n_started in stats["running"]:
            acc = rows.setdefault(cid, [0, 0])
            acc[0] += n_rows
            acc[1] += n_started
        started_total += stats.get("sends_started_total", 0)
        rate += stats.get("sends_per_s", 0.0)
    return {"by_status": by_status, "running": [(cid, n, s) for cid, (n, s) in sorted(rows.items())],
            "sends_started_total": started_total, "sends_per_s": rate}
