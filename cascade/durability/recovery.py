"""Recovery at start: the newest snapshot set that verifies, then the
journal after it, replayed through the shards' own handlers.

A set is one file per engine shard (1..n) and a front file (shard 0:
templates, idempotency keys, the clock) written last, each noting the
journal position its state stands at; a set without its front was cut
short and is passed over. A journal record is replayed into the state it belongs to
when it comes after that state's position. A set that fails its checksum is
skipped, loudly, for the one before; a newer format is refused. The clock of
a manual or scaled server resumes at the latest time the data has seen.
Timers that fell due while the server was down fire as soon as the shards
start, and messages no provider answered are handed over again.
"""

from __future__ import annotations

import gc
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any, Protocol, Sequence

from ..domain.records import ClockMoved, SendStarted, ShardBatch, ShardLayout, UnknownRecord, decode, decode_all
from ..engine.clock import Clock
from ..engine.idempotency import IdempotencyKeys
from ..engine.shard import ShardState
from ..storage.codec import CorruptSnapshot, UnsupportedFormat
from ..storage.files import SnapshotSet, list_snapshots, read_snapshot, verify_snapshot
from ..storage.journal import Journal
from .loader import ShardLoader, kept_recipient, owner_of

__all__ = ["RecoveryRefused", "RecoveryResult", "recover"]

log = logging.getLogger("cascade.recovery")



class Recoverable(Protocol):
    """What recovery needs of the engine (engine/supervisor.py's Engine),
    before its shards start."""

    states: Sequence[ShardState]
    idempotency: IdempotencyKeys
    clock: Clock

    def shard_of_key(self, key: int) -> int: ...

    def shard_of_recipient(self, rid: str) -> int: ...

    def apply_front(self, record: Any) -> None: ...

class RecoveryRefused(RuntimeError):
    """Starting would silently lose data: the message says why and what to do."""


@dataclass
class RecoveryResult:
    snapshot_position: int | None = None
    snapshot_records: int = 0
    replayed: int = 0
    seconds: float = 0.0
    skipped_sets: list[int] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        return {"snapshot_position": self.snapshot_position, "snapshot_records": self.snapshot_records,
                "replayed": self.replayed, "seconds": round(self.seconds, 3), "skipped_sets": self.skipped_sets}


def _newest_loadable(directory: str, result: RecoveryResult) -> tuple[SnapshotSet, dict[str, Any]] | None:
    if not os.path.isdir(directory):
        return None
    for candidate in list_snapshots(directory):
        if 0 not in candidate.paths:  # the front is written last: this set was interrupted
            log.info("snapshot set at journal position %d was never finished; using an older one",
                     candidate.journal_position)
            continue
        try:
            front = verify_snapshot(candidate.paths[0]).header
            missing = set(range(1, front["shards"] + 1)) - candidate.paths.keys()
            if missing:
                raise CorruptSnapshot(candidate.paths[0], 0, f"the set lacks shard files {sorted(missing)}")
            for k in range(1, front["shards"] + 1):
                verify_snapshot(candidate.paths[k], decode=False)
            return candidate, front
        except UnsupportedFormat as exc:  # newer data: falling back past it would lose it
            raise RecoveryRefused(f"snapshot set at journal position {candidate.journal_position}: {exc}") from exc
        except (CorruptSnapshot, OSError, KeyError) as exc:
            log.error("SNAPSHOT SET AT JOURNAL POSITION %d IS UNUSABLE, falling back to the one before: %s",
                      candidate.journal_position, exc)
            result.skipped_sets.append(candidate.journal_position)
    return None


def _replay_routed(engine: Recoverable, loaders: list[ShardLoader], records: list[Any], writer: int,
                   same_layout: bool) -> None:
    """Records of one writer shard, each to the shard that owns it now."""
    if same_layout:  # a shard writes records of its own sends and recipients only
        loaders[writer].replay(records)
        return
    for rec in records:
        owner = owner_of(rec)
        target = engine.shard_of_recipient(owner) if isinstance(owner, str) else engine.shard_of_key(owner)
        loaders[target].replay((rec,))


def _latest_and_claims(engine: Recoverable, records: list[Any], latest: float | None) -> float | None:
    """The latest time the records have seen; idempotency keys of their sends."""
    for rec in records:
        if latest is None or rec.at > latest:
            latest = rec.at
        if type(rec) is SendStarted and rec.idempotency is not None:
            key, digest, expires = rec.idempotency
            engine.idempotency.restore(key, digest, rec.send, expires)
    return latest


def _drop_dangling_claims(engine: Recoverable) -> None:
    """A snapshot may hold an idempotency key whose send never became
    durable: forget it, so a retry starts the send instead of a 404."""
    for claim in engine.idempotency.live(engine.clock.now()):
        if claim.send_key is None or claim.send_key not in engine.states[engine.shard_of_key(claim.send_key)].sends:
            engine.idempotency.release(claim)


def recover(engine: Recoverable, directory: str, journal: Journal) -> RecoveryResult:
    """Load state into `engine` (whose shards must not be running yet)."""
    # Everything recovery builds lives long: with the collector on, each of
    # its passes would walk the millions of objects built so far (seconds).
    collecting = gc.isenabled()
    gc.disable()
    try:
        return _recover(engine, directory, journal)
    finally:
        if collecting:
            gc.enable()


def _recover(engine: Recoverable, directory: str, journal: Journal) -> RecoveryResult:
    began = time.perf_counter()
    result = RecoveryResult()
    states = engine.states
    loaders = [ShardLoader(st) for st in states]
    positions: dict[Any, int] = {}
    same_layout = True
    latest = None
    found = _newest_loadable(directory, result)
    if found is not None:
        chosen, front = found
        result.snapshot_position = chosen.journal_position
        same_layout = front["shards"] == len(states)
        header, records = read_snapshot(chosen.paths[0])
        positions["front"] = header["shard_position"]
        for raw in records:
            front_rec = decode(raw)
            if type(front_rec) is ClockMoved:
                latest = front_rec.at
            else:
                engine.apply_front(front_rec)
        for k in range(1, front["shards"] + 1):
            header, records = read_snapshot(chosen.paths[k])
            writer = header["engine_shard"]
            positions[writer] = header["shard_position"]
            by_key, by_rid = engine.shard_of_key, engine.shard_of_recipient
            shapes: list[dict[int, Any]] = [{} for _ in states]  # per target shard: its own counters
            for rec in records:
                tag = rec[0]
                if tag == "S*":
                    if same_layout:
                        loaders[writer].restore_sends(rec[1], shapes[writer])
                    else:
                        for send in rec[1]:
                            t = by_key(send[0])
                            loaders[t].restore_sends((send,), shapes[t])
                    result.snapshot_records += len(rec[1])
                elif tag == "shape":
                    for t, loader in enumerate(loaders):
                        shapes[t][rec[1]] = loader.restore_shape(rec)
                elif tag == "R*":
                    for rcpt in rec[1]:
                        loaders[by_rid(rcpt[0])].restore_recipient(rcpt)
                    result.snapshot_records += len(rec[1])
                elif tag == "counters":
                    loaders[writer % len(states)].restore_counters(rec[1])
                elif tag == "kept":  # throttle starts and engagement records
                    for kept in map(decode, rec[1]):
                        rid = kept_recipient(kept)
                        loaders[writer % len(states) if rid is None else by_rid(rid)].restore_kept(kept)
                elif tag == "rows":  # a campaign's started rows: any shard may hold them
                    loaders[writer % len(states)].restore_campaign_rows(rec[1], rec[2])
        for loader in loaders:
            loader.rebuild()
    after = min(positions.values()) if positions else 0
    if found is None and result.skipped_sets:
        first = next(iter(journal.replay(after=0)), None)
        if first is not None and first[0] > 1:
            raise RecoveryRefused(
                f"no snapshot set is usable (positions {result.skipped_sets} failed verification) and the journal "
                f"starts at position {first[0]}: the records before it were deleted after those snapshots. "
                "Starting would silently lose them; restore a sound snapshot set or the journal.")
    if journal.position() < max(positions.values(), default=0):
        raise RecoveryRefused(
            f"the journal ends at position {journal.position()} but the snapshot set needs it up to "
            f"{max(positions.values())}: the journal was lost or cut short. Restore it, or move the "
            "snapshots away to start from them alone at the risk of losing what came after.")
    front_at = positions.get("front", 0)
    for position, raw in journal.replay(after=after):
        try:
            rec = decode(raw)
            inner = decode_all(rec.records) if type(rec) is ShardBatch else None
        except UnknownRecord as exc:
            raise RecoveryRefused(f"journal position {position}: {exc}. Start the version of cascade that "
                                  "wrote this data directory, or move it away.") from None
        if type(rec) is ShardLayout:  # what writes the records after it, whatever the snapshots hold
            same_layout = rec.shards == len(states)
            continue
        if inner is None:
            if position > front_at:
                if type(rec) is ClockMoved:
                    latest = max(latest or 0.0, rec.at)
                else:
                    engine.apply_front(rec)
                result.replayed += 1
            continue
        if position > front_at:
            # Idempotency keys belong to the front, whose snapshot may be
            # older than this shard's: take them from every send after it.
            latest = _latest_and_claims(engine, inner, latest)
        if position <= positions.get(rec.writer, 0):
            continue
        _replay_routed(engine, loaders, inner, rec.writer, same_layout)
        result.replayed += len(inner)
    for loader in loaders:
        loader.finish()
    _drop_dangling_claims(engine)
    if latest is not None and hasattr(engine.clock, "restore"):
        engine.clock.restore(latest)
    result.seconds = time.perf_counter() - began
    return result
