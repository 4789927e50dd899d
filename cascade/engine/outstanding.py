"""Messages handed to asynchronous providers whose answers the shards have
not applied yet, counted so the manual clock can wait for them.

Moving a manual clock in one step must fire what the same time in small
steps fires: a provider's refusal escalates at once (rule 5), so time may
move past a deadline only once every answer already due has been applied.
Shards count messages in when they hand them over and out when they have
applied the answers, in that order within a batch, so the count reaches
zero only when nothing is on its way.
"""

from __future__ import annotations

import threading

__all__ = ["Outstanding"]


class Outstanding:
    def __init__(self) -> None:
        self._count = 0
        self._idle = threading.Condition()

    def settle(self, handed: int, answered: int) -> None:
        """A shard handed over `handed` messages and applied `answered` answers."""
        if not handed and not answered:
            return
        with self._idle:
            self._count += handed - answered
            if self._count <= 0:
                self._count = 0
                self._idle.notify_all()

    def wait_idle(self, timeout: float) -> bool:
        """Until no answer is on its way (False if `timeout` passed first)."""
        with self._idle:
            return self._idle.wait_for(lambda: self._count == 0, timeout)

    def __int__(self) -> int:
        return self._count
