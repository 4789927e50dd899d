"""The default provider: one JSON line a message on the `cascade.delivery`
logger, and the message counts as handed over."""

from __future__ import annotations

import json
import logging

from .base import DeliveryOutcome, OutgoingMessage

__all__ = ["LogProvider"]

_log = logging.getLogger("cascade.delivery")
_OK = DeliveryOutcome(True)


class LogProvider:
    synchronous = True

    def __init__(self, name: str = "log") -> None:
        self.name = name

    def deliver_now(self, message: OutgoingMessage) -> DeliveryOutcome:
        if _log.isEnabledFor(logging.INFO):
            _log.info(json.dumps({"event": "deliver", **message.payload()}, ensure_ascii=False, default=str))
        return _OK

    async def deliver(self, message: OutgoingMessage) -> DeliveryOutcome:
        return self.deliver_now(message)

    async def close(self) -> None:
        return None
