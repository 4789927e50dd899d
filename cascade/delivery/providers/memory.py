"""An in-memory provider for users' tests: it records every message it is
handed and can be told to refuse them, like a provider that is down."""

from __future__ import annotations

import itertools
import threading

from .base import DeliveryOutcome, OutgoingMessage

__all__ = ["MemoryProvider"]


class MemoryProvider:
    synchronous = True

    def __init__(self, name: str = "memory", record: bool = True, sink: list[str] | None = None) -> None:
        self.name = name
        self.record = record
        self.sink = sink  # message ids in delivery order, shareable between providers
        self.messages: list[OutgoingMessage] = []
        self._accepted = itertools.count()  # next() is atomic: no lock on the fast path
        self.refused = 0
        self._failing = False
        self._lock = threading.Lock()

    @property
    def accepted(self) -> int:
        return int(self._accepted.__reduce__()[1][0])

    def fail(self, failing: bool = True) -> None:
        """Refuse every later message (as after exhausted retries)."""
        self._failing = failing

    def deliver_now(self, message: OutgoingMessage) -> DeliveryOutcome:
        if self._failing:
            with self._lock:
                self.refused += 1
            return DeliveryOutcome(False, "retries_exhausted")
        next(self._accepted)
        if self.record or self.sink is not None:
            with self._lock:
                if self.record:
                    self.messages.append(message)
                if self.sink is not None:
                    self.sink.append(message.message_id)
        return _OK

    async def deliver(self, message: OutgoingMessage) -> DeliveryOutcome:
        return self.deliver_now(message)

    async def close(self) -> None:
        return None


_OK = DeliveryOutcome(True)
