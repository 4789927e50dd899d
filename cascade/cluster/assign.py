"""Which partition holds a slot, and which node should own a partition.

Slots (16,384, carried in every send id and derived from every recipient
id) are grouped into `partitions` contiguous ranges, as Temporal groups
workflow ids into shards: partition p holds slots [p*S/P, (p+1)*S/P). The
grouping is fixed when the cluster is created (recorded in its bucket),
because a send's partition must not change while it lives.

Owners are chosen by rendezvous (highest-random-weight) hashing with
bounded loads over the live nodes: each partition goes to the first node
in its own hash order that still has room (P/N, rounded down or up). Every
node computes the same answer from the same member list with no
coordination; plain rendezvous hashing would move the fewest partitions
but with 8 or 16 partitions leaves a node with none or half of them (seen:
1, 7 and 8 of 16), so the cap trades a few extra moves on a join for
shares that differ by at most one.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

from ..domain.ids import SLOTS, slot_of, slot_of_key

__all__ = ["assignment", "partition_of_key", "partition_of_recipient", "partition_of_slot", "preferred_owner",
           "share"]


def partition_of_slot(slot: int, partitions: int) -> int:
    return slot * partitions // SLOTS


def partition_of_key(key: int, partitions: int) -> int:
    return partition_of_slot(slot_of_key(key), partitions)


def partition_of_recipient(rid: str, partitions: int) -> int:
    return partition_of_slot(slot_of(rid), partitions)


def _weight(node: str, partition: int) -> int:
    digest = hashlib.blake2b(f"{node}/{partition}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def assignment(nodes: Iterable[str], partitions: int) -> dict[int, str]:
    """Partition -> the node that should own it, among `nodes` (empty when there are none)."""
    members = sorted(set(nodes))
    if not members:
        return {}
    floor, extra = divmod(partitions, len(members))  # `extra` nodes may hold one more than `floor`
    load = dict.fromkeys(members, 0)
    out = {}
    for p in range(partitions):
        for _, node in sorted(((_weight(n, p), n) for n in members), reverse=True):
            if load[node] < floor or (load[node] == floor and extra > 0):
                if load[node] == floor:
                    extra -= 1
                out[p] = node
                load[node] += 1
                break
    return out


def preferred_owner(partition: int, nodes: Iterable[str], partitions: int) -> str | None:
    return assignment(nodes, partitions).get(partition)


def share(node: str, nodes: Iterable[str], partitions: int) -> set[int]:
    """The partitions `node` should own when `nodes` are the live members."""
    return {p for p, owner in assignment(set(nodes) | {node}, partitions).items() if owner == node}
