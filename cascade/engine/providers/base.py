"""What a delivery provider is, and the message it is handed.

A provider is either synchronous (`deliver_now`, called on the shard's
thread: only for providers that cannot block, like `log` and `memory`) or
asynchronous (`deliver`, awaited on the delivery dispatcher's event loop,
like `webhook`). Either way it answers with a `DeliveryOutcome`; retries are
the provider's own business and are over by the time it answers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

__all__ = ["DeliveryOutcome", "OutgoingMessage", "Provider"]


@dataclass(frozen=True, slots=True)
class OutgoingMessage:
    message_id: str
    send_id: str
    template: str
    template_version: int
    step: int  # from 1
    channel: str
    recipient: dict[str, Any]
    content: Any

    def payload(self) -> dict[str, Any]:
        """The JSON body of API.md § Delivery."""
        return {
            "messageId": self.message_id,
            "sendId": self.send_id,
            "template": self.template,
            "templateVersion": self.template_version,
            "step": self.step,
            "channel": self.channel,
            "recipient": self.recipient,
            "content": self.content,
        }


@dataclass(frozen=True, slots=True)
class DeliveryOutcome:
    ok: bool
    reason: str | None = None  # why it failed, e.g. "http_400", "retries_exhausted"
    attempts: int = 1


class Provider(Protocol):
    name: str
    synchronous: bool

    def deliver_now(self, message: OutgoingMessage) -> DeliveryOutcome:
        """Synchronous providers only."""
        ...

    async def deliver(self, message: OutgoingMessage) -> DeliveryOutcome:
        """Asynchronous providers only."""
        ...

    async def close(self) -> None: ...
