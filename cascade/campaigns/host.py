"""What campaigns need of the engine: a narrow protocol, so campaigns build
on the engine's public calls and the engine knows nothing of campaigns."""

from __future__ import annotations

from typing import Any, Callable, Protocol

from ..domain.templates import TemplateRegistry
from ..engine.background import Background
from ..engine.clock import Clock
from ..engine.commands import Command
from ..engine.gc_governor import GcGovernor
from ..engine.reply import Reply
from ..storage.journal import Journal

__all__ = ["CampaignHost"]


class CampaignHost(Protocol):
    clock: Clock
    journal: Journal | None
    templates: TemplateRegistry
    background: Background  # fan-outs and uploads yield to requests through it
    gc: GcGovernor

    @property
    def started(self) -> bool: ...

    @property
    def shards(self) -> int: ...

    @property
    def tick_interval_s(self) -> float: ...

    def check_open(self) -> None: ...

    def pending(self) -> int: ...

    def ask_shards(self, op: str, payload: Any, combine: Callable[[list[Any]], Any], parent: Any = None) -> Any: ...

    def submit_batches(self, batches: list[list[Command]], max_message: int) -> Reply: ...

    def campaign_rows_started(self, campaign_id: str) -> Reply: ...

    def totals(self, groups: list[str] | None = None) -> Reply: ...
