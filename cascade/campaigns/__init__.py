"""Campaigns: one template version sent to many recipients, now or at a time.

`book` owns the campaigns and their lifecycle, `fanout` turns their rows
into sends, `rows` stores uploaded rows. `Campaigns` puts the two together
as an extension of the engine (engine/extension.py): its records join the
front's snapshots and journal, the manual clock starts due campaigns, and it
starts and stops with the engine. It reaches the engine through
`CampaignHost` alone.
"""

from __future__ import annotations

from typing import Any

from .book import CAMPAIGN_RECORDS, CampaignBook, RowsStore
from .fanout import Fanout
from .host import CampaignHost

__all__ = ["CampaignHost", "Campaigns", "attach_campaigns", "campaigns_of"]


class Campaigns:
    record_types = CAMPAIGN_RECORDS

    def __init__(self, host: CampaignHost, directory: str | None = None, max_sends_per_s: float = 0.0,
                 rows_store: RowsStore | None = None) -> None:
        self.book = CampaignBook(host, directory, rows_store)
        self.fanout = Fanout(host, self.book, max_sends_per_s)
        self.book.fanout = self.fanout

    # -- the engine's Extension protocol ----------------------------------------------
    def records(self) -> list[Any]:
        return self.book.front_records()

    def apply(self, record: Any) -> None:
        self.book.apply(record)

    def settle_at(self, t: float) -> None:
        """A campaign due by `t` starts (and fans out whole) at `t` (manual clock)."""
        self.book.settle(t, lambda: self.fanout.alive)

    def next_due(self) -> float | None:
        return self.book.next_start()

    def start(self) -> None:
        self.book.remove_orphans()
        self.book.prune_started_rows()
        self.fanout.start()  # resumes campaigns that were running

    def stop(self) -> None:
        self.fanout.stop()


def attach_campaigns(engine: Any, directory: str | None = None, max_sends_per_s: float = 0.0,
                     rows_store: RowsStore | None = None) -> Campaigns:
    """Campaigns on `engine` (before it recovers or starts): `directory` keeps
    rows files (None: rows inline in the journal), `max_sends_per_s` paces
    the fan-out (0: unlimited), `rows_store` holds the rows files where
    another process can fetch them (a cluster's object store)."""
    campaigns = Campaigns(engine, directory, max_sends_per_s, rows_store)
    engine.attach(campaigns)
    return campaigns


def campaigns_of(engine: Any) -> Campaigns | None:
    """The campaigns attached to `engine`, if any."""
    for extension in engine.extensions:
        if isinstance(extension, Campaigns):
            return extension
    return None
