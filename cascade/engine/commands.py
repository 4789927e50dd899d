"""What travels to a shard: small immutable commands, batched in lists.

`arrival` is when the request behind a command reached the server (engine
clock time): a window whose deadline comes after it is judged only once the
command is applied (API.md rule 11, see mailbox.py). Commands that no
request carries (ticks, delivery answers, the manual clock) have none.
"""

from __future__ import annotations

from typing import Any, NamedTuple

__all__ = ["Command"]


class Command(NamedTuple):
    op: str  # the shard's handler (ShardState._ops)
    payload: Any
    reply: Any = None  # a Reply (or a Gather part), or None when nobody waits
    arrival: float | None = None
