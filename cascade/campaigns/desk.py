"""What the campaign routes ask of campaigns: create, read, list, cancel.

Two desks answer it: `LocalDesk` over one engine's book, and the cluster's
(cluster/campaigns.py), which splits a campaign into one part per
partition and puts the parts back together when asked. Both give the same
views (`campaign_view`) and the same pages (`newest_first_page`).
"""

from __future__ import annotations

from typing import Any, Protocol

from ..domain.errors import InvalidInput
from ..engine.background import Background
from .book import Campaign, CampaignBook
from .rows import Upload

__all__ = ["CampaignDesk", "LocalDesk", "newest_first_page"]


class CampaignDesk(Protocol):
    background: Background  # uploads are background work: they yield to requests through it

    def new_upload(self) -> Upload[Any]: ...

    async def create(self, upload: Upload[Any], rows: Any, template: str, scheduled_at: float | None,
                     name: str | None, data: bytes | None) -> Campaign: ...

    async def view(self, cid: str) -> dict[str, Any]: ...

    async def page(self, status: str | None, limit: int, before: str | None) -> dict[str, Any]: ...

    async def cancel(self, cid: str) -> dict[str, Any]: ...


def newest_first_page(found: list[Campaign], limit: int, before: str | None) -> tuple[list[Campaign], str | None]:
    """A page of `found` (newest first) after the campaign `before`: (the page, the next cursor)."""
    if before:
        at = next((k for k, c in enumerate(found) if c.id == before), None)
        if at is None:
            raise InvalidInput(f"cursor {before!r} names no campaign",
                               [("before", "use the `next` value of the previous page")])
        found = found[at + 1:]
    page = found[:limit]
    return page, page[-1].id if len(found) > limit else None


class LocalDesk:
    """Campaigns of one engine (a single server)."""

    def __init__(self, engine: Any, book: CampaignBook) -> None:
        self.engine, self.book = engine, book
        self.background: Background = engine.background

    def new_upload(self) -> Upload[Any]:
        return self.book.new_upload()

    async def create(self, upload: Upload[Any], rows: Any, template: str, scheduled_at: float | None,
                     name: str | None, data: bytes | None) -> Campaign:
        campaign: Campaign = await self.book.create(upload, rows, template, scheduled_at, name, data)
        return campaign

    async def _view(self, c: Campaign, metrics: bool = True) -> dict[str, Any]:
        totals = await self.engine.totals([c.group])
        return self.book.view(c, totals.get(c.group), metrics)

    async def view(self, cid: str) -> dict[str, Any]:
        return await self._view(self.book.get(cid))

    async def page(self, status: str | None, limit: int, before: str | None) -> dict[str, Any]:
        page, after = newest_first_page(self.book.newest_first(status), limit, before)
        totals: dict[str, Any] = await self.engine.totals([c.group for c in page]) if page else {}
        return {"campaigns": [self.book.view(c, totals.get(c.group), metrics=False) for c in page], "next": after}

    async def cancel(self, cid: str) -> dict[str, Any]:
        c: Campaign = await self.book.cancel(cid)
        return await self._view(c)
