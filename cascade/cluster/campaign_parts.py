"""A cluster campaign as parts: one per partition holding some of its recipients.

A campaign's rows are split by the partition of each recipient
(`PartitionedRows`, a `RowsSink`), so each part's sends start in the
partition that journals the part, through that partition's own fan-out,
started-rows bitmaps and recovery, exactly as on a single server. Parts
travel between nodes as plain lists (`part_of`); `merge` puts a campaign
back together for the API: recipients and rejected rows summed, the group
totals merged, and one status for the whole:

- `cancelled` once any part is (a cancel goes to every part);
- `completed` once every part is;
- `running` once any part is, or once `scheduledAt` has passed (a part's
  fan-out promotes itself on its own clock tick);
- `scheduled` before that.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any

from ..campaigns.book import CANCELLED, COMPLETED, RUNNING, SCHEDULED, Campaign
from ..campaigns.rows import Row, RowsWriter
from ..engine.counters import merge_totals
from .assign import partition_of_recipient

__all__ = ["PartitionedRows", "merge", "part_of"]


class PartitionedRows:
    """An upload's rows, one rows file per partition (`<campaign>.p<partition>.rows`)."""

    def __init__(self, directory: str, campaign_id: str, partitions: int) -> None:
        self.directory, self.campaign_id, self.partitions = directory, campaign_id, partitions
        self._writers: dict[int, RowsWriter] = {}

    @property
    def count(self) -> int:
        return sum(w.count for w in self._writers.values())

    def add(self, row: Row) -> None:
        p = partition_of_recipient(row[0], self.partitions)
        writer = self._writers.get(p)
        if writer is None:
            writer = self._writers[p] = RowsWriter(self.directory, f"{self.campaign_id}.p{p}")
        writer.add(row)

    def commit(self) -> dict[int, tuple[str, int]]:
        """Partition -> (its rows file's name, its row count), every file durable."""
        return {p: (str(w.commit()), w.count) for p, w in sorted(self._writers.items())}

    def abort(self) -> None:
        for w in self._writers.values():
            w.abort()
        with contextlib.suppress(OSError):  # the upload's own folder, once empty
            os.rmdir(self.directory)


def part_of(c: Campaign, totals: Any) -> list[Any]:
    """A part as it travels (`totals`: the partition's totals of the campaign's group, or None)."""
    return [c.id, c.name, c.status, c.template, c.version, c.scheduled_at, c.created_at, c.finished_at,
            c.n_rows, c.rejected, c.problem, totals]


def merge(parts: list[list[Any]], now: float) -> tuple[Campaign, Any]:
    """One campaign from its parts (at least one): (the campaign, its merged group totals)."""
    first = parts[0]
    c = Campaign(first[0], first[3], first[4], first[1], first[5], first[6], "", sum(p[8] for p in parts),
                 sum(p[9] for p in parts), None)
    statuses = {p[2] for p in parts}
    if CANCELLED in statuses:
        c.status = CANCELLED
    elif statuses == {COMPLETED}:
        c.status = COMPLETED
    elif RUNNING in statuses or c.scheduled_at <= now:
        c.status = RUNNING
    else:
        c.status = SCHEDULED
    if c.status in (CANCELLED, COMPLETED):
        c.finished_at = max((p[7] for p in parts if p[7] is not None), default=None)
    c.problem = next((p[10] for p in parts if p[10] is not None), None)
    group = c.group
    totals = merge_totals([{group: p[11]} for p in parts if p[11] is not None]).get(group)
    return c, totals
