"""The front door's own state: template versions, idempotency keys and the
records of the engine's extensions (campaigns), for snapshots and from the
journal.

Templates are shared read-only with the shards; everything else here is
touched only by the front (the event loop and the extensions' threads).
"""

from __future__ import annotations

from typing import Any, Sequence

from ..domain.errors import NotFound
from ..domain.records import ClockMoved, IdempotencyKept, TemplateDeleted, TemplatePut
from ..domain.templates import TemplateRegistry
from .clock import Clock
from .extension import Extension
from .idempotency import IdempotencyKeys
from .snapshot_records import template_record

__all__ = ["FrontState"]


class FrontState:
    def __init__(self, clock: Clock, templates: TemplateRegistry, idempotency: IdempotencyKeys,
                 extensions: Sequence[Extension]) -> None:
        self.clock = clock
        self.templates = templates
        self.idempotency = idempotency
        self.extensions = extensions  # the engine's list: extensions attached later are seen too

    def records(self) -> list[Any]:
        """Every template version, deletions, idempotency keys, the extensions' records and the clock."""
        versions = sorted(self.templates.all_versions(), key=lambda tv: (tv.id, tv.version))
        records: list[Any] = [template_record(tv) for tv in versions]
        current = {tv.id for tv in self.templates.all()}
        records += [TemplateDeleted(tid) for tid in sorted({tv.id for tv in versions} - current)]
        now = self.clock.now()
        records += [IdempotencyKept(c.key, c.digest, c.send_key, c.expires) for c in self.idempotency.live(now)]
        for extension in self.extensions:
            records += extension.records()
        records.append(ClockMoved(now))
        return records

    def apply(self, record: Any) -> None:
        kind = type(record)
        if kind is TemplatePut:
            self.templates.restore(record.template, record.version, dict(record.body), record.created,
                                   record.updated)
        elif kind is TemplateDeleted:
            try:
                self.templates.delete(record.template)
            except NotFound:
                pass
        elif kind is IdempotencyKept:
            self.idempotency.restore(record.key, record.digest, record.send, record.expires)
        else:
            for extension in self.extensions:
                if kind in extension.record_types:
                    extension.apply(record)
        # ClockMoved is recovery's business: it resumes at the latest time seen.
