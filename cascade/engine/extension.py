"""What the engine lets a feature built on it join: the front's records
(snapshots, journal replay), the manual clock, and the engine's lifecycle.
Campaigns are one (campaigns/__init__.py); the engine imports none."""

from __future__ import annotations

from typing import Any, Protocol

__all__ = ["Extension"]


class Extension(Protocol):
    record_types: tuple[type, ...]  # the front records it owns

    def records(self) -> list[Any]: ...  # its state, for a snapshot of the front

    def apply(self, record: Any) -> None: ...  # one of its records, at recovery

    def settle_at(self, t: float) -> None: ...  # the manual clock reached t: do what is due

    def next_due(self) -> float | None: ...  # when it next has something due

    def start(self) -> None: ...

    def stop(self) -> None: ...
