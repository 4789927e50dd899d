"""Per-step and per-outcome counters, kept as plain integers in each shard.

A group is a template ("t:<id>") or a campaign ("c:<id>"). Rows are keyed by
(step number, channel) so the counts of a step survive template versions that
keep it. A send points at one `Counters` per group it belongs to; the state
machine bumps them directly, with no lock and no prometheus call on the hot
path. Readers get copies summed across shards at read time.
"""

from __future__ import annotations

from typing import Any

from ..domain.send import STEP_COLUMNS, Counters
from ..domain.templates import TemplateVersion

__all__ = ["CounterBook", "GroupTotals", "SEND_COLUMNS", "STEP_COLUMNS", "merge_totals"]

SEND_COLUMNS = ("started", "stopped", "completed", "cancelled", "failed", "throttled")

# (send outcome counts, {(step, channel): step counts})
GroupTotals = tuple[list[int], dict[tuple[int, str], list[int]]]


class _Group:
    __slots__ = ("sends", "rows")

    def __init__(self) -> None:
        self.sends = [0] * len(SEND_COLUMNS)
        self.rows: dict[tuple[int, str], list[int]] = {}


class CounterBook:
    def __init__(self) -> None:
        self._groups: dict[str, _Group] = {}
        # keyed by template version and step order: a send in an order of its
        # own (rule 14) counts into the rows of the step numbers it fired as
        self._views: dict[tuple[str, str, int, tuple[int, ...]], Counters] = {}
        self._sets: dict[tuple[tuple[str, ...], str, int, tuple[int, ...]], tuple[Counters, ...]] = {}

    def counters_for(self, group: str, tpl: TemplateVersion) -> Counters:
        view_key = (group, tpl.id, tpl.version, tpl.order)
        view = self._views.get(view_key)
        if view is None:
            g = self._groups.get(group)
            if g is None:
                g = self._groups[group] = _Group()
            rows = tuple(g.rows.setdefault((s.number, s.channel), [0] * len(STEP_COLUMNS)) for s in tpl.steps)
            view = self._views[view_key] = Counters(group, g.sends, rows)
        return view

    def counters_of(self, groups: tuple[str, ...], tpl: TemplateVersion) -> tuple[Counters, ...]:
        """The tuple a send holds: shared by every send of the same groups and version."""
        key = (groups, tpl.id, tpl.version, tpl.order)
        found = self._sets.get(key)
        if found is None:
            found = self._sets[key] = tuple(self.counters_for(g, tpl) for g in groups)
        return found

    def sets_with(self, group: str) -> set[int]:
        """Ids of the counter tuples that count into `group`: a send belongs to
        the group if its `counters` is one of them."""
        return {id(found) for (groups, *_), found in self._sets.items() if group in groups}

    def totals(self, groups: list[str] | None = None) -> dict[str, GroupTotals]:
        names = self._groups.keys() if groups is None else [g for g in groups if g in self._groups]
        return {n: (list(self._groups[n].sends), {k: list(v) for k, v in self._groups[n].rows.items()})
                for n in names}

    def to_record(self) -> list[Any]:
        """A copy (the counters move on while a snapshot is written)."""
        return [[n, list(g.sends), [[k[0], k[1], list(v)] for k, v in g.rows.items()]]
                for n, g in self._groups.items()]

    def load_record(self, rec: list[Any]) -> None:
        """Add counts from a snapshot (added, so shards can be merged)."""
        for name, sends, rows in rec:
            g = self._groups.setdefault(name, _Group())
            for i, v in enumerate(sends):
                g.sends[i] += v
            for step, channel, values in rows:
                row = g.rows.setdefault((step, channel), [0] * len(STEP_COLUMNS))
                for i, v in enumerate(values):
                    row[i] += v


def merge_totals(parts: list[dict[str, GroupTotals]]) -> dict[str, GroupTotals]:
    out: dict[str, GroupTotals] = {}
    for part in parts:
        for name, (sends, rows) in part.items():
            acc = out.get(name)
            if acc is None:
                out[name] = (list(sends), {k: list(v) for k, v in rows.items()})
                continue
            for i, n in enumerate(sends):
                acc[0][i] += n
            for k, values in rows.items():
                row = acc[1].setdefault(k, [0] * len(values))
                for i, x in enumerate(values):
                    row[i] += x
    return out
