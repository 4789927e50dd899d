"""Which partition holds a slot, and which node should own a partition.

Slots (16,384, carried in every send id and derived from every recipient
id) are grouped into `partitions` contiguous ranges, as Temporal groups
workflow ids into shards: partition p holds slots [p*S/P, (p+1)*S/P). The
grouping is fixed when the cluster is created (recorded in its bucket),
because a send's partition must not change while it lives.

Owners are chosen by rendezvous (highest-random-weight) hashing over the
live nodes: every node computes the same answer from the same member list
with no coordination, and a node joining or leaving moves only the
partitions it gains or loses (about P/N), never a reshuffle of the rest.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

from ..domain.ids import SLOTS, slot_of, slot_of_key

__all__ = ["partition_of_key", "partition_of_recipient", "partition_of_slot", "preferred_owner", "share"]


def partition_of_slot(slot: int, partitions: int) -> int:
    return slot * partitions // SLOTS


def partition_of_key(key: int, partitions: int) -> int:
    return partition_of_slot(slot_of_key(key), partitions)


def partition_of_recipient(rid: str, partitions: int) -> int:
    return partition_of_slot(slot_of(rid), partitions)


def _weight(node: str, partition: int) -> int:
    digest = hashlib.blake2b(f"{node}/{partition}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def preferred_owner(partition: int, nodes: Iterable[str]) -> str | None:
    """The node that should own `partition` among `nodes` (None when there are none)."""
    best: tuple[int, str] | None = None
    for node in nodes:
        candidate = (_weight(node, partition), node)
        if best is None or candidate > best:
            best = candidate
    return best[1] if best is not None else None


def share(node: str, nodes: Iterable[str], partitions: int) -> set[int]:
    """The partitions `node` should own when `nodes` are the live members."""
    members = sorted(set(nodes) | {node})
    return {p for p in range(partitions) if preferred_owner(p, members) == node}
