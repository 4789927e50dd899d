"""What a delivery provider is, and the message it is handed.

A provider is either synchronous (`deliver_now`, called on the shard's
thread: only for providers that cannot block, like `log` and `memory`) or
asynchronous (`deliver`, awaited on the delivery dispatcher's event loop,
like `webhook`). Either way it answers with a `DeliveryOutcome`; retries are
the provider's own business and are over by the time it answers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Protocol

__all__ = ["DeliveryOutcome", "OutgoingMessage", "Provider"]


class OutgoingMessage:
    """One fired step on its way to a provider. Content may be rendered
    lazily (`render` given instead of `content`): the work happens the first
    time a provider reads it, on the provider's side of the hand-off."""

    __slots__ = ("message_id", "send_id", "template", "template_version", "step", "channel",
                 "recipient", "_content", "_render", "_render_arg")

    def __init__(self, message_id: str, send_id: str, template: str, template_version: int, step: int,
                 channel: str, recipient: dict[str, Any], content: Any = None,
                 render: Callable[[Any], Any] | None = None, render_arg: Any = None) -> None:
        self.message_id = message_id
        self.send_id = send_id
        self.template = template
        self.template_version = template_version
        self.step = step  # from 1
        self.channel = channel
        self.recipient = recipient
        self._content = content
        self._render = render
        self._render_arg = render_arg

    @property
    def content(self) -> Any:
        if self._render is not None:
            self._content = self._render(self._render_arg)
            self._render = self._render_arg = None
        return self._content

    def __repr__(self) -> str:
        return f"OutgoingMessage({self.message_id!r}, channel={self.channel!r})"

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
