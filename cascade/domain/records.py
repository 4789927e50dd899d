"""Every state change of cascade as a named, versioned record: a fact in the
past tense. Shards and the front door *decide* what happened and emit these;
*applying* them is the only way state changes, live and at recovery alike.

Each record is a `NamedTuple` whose last field, `tag`, names its type and
schema version (a new version of a record gets a new tag; `decode` keeps
reading the old one). A record is its own msgpack encoding: an array of its
fields with the tag last, so `decode(raw)` is one table lookup and one call,
and nothing anywhere picks fields out by position.

Shard records name their send by its key (an int carrying the hash slot) or
their recipient by id; `route` says which. A shard journals one
`ShardBatch` per batch of commands: one frame and one checksum a batch.
"""

from __future__ import annotations

from typing import Any, NamedTuple

__all__ = [
    "CampaignCreated", "CampaignEnded", "ClockMoved", "DeliveryAnswered", "EngagementKept", "IdempotencyKept",
    "RecipientPut", "Record", "SendCancelled", "SeriesKept", "SendFinished", "SendOrdered", "SendStarted", "SendStopped",
    "ShardBatch", "ShardLayout", "SignalApplied", "StepDeferred", "StepFailed", "StepFired", "StepSkipped",
    "ThrottleKept", "TemplateDeleted", "TemplatePut", "UnknownRecord", "WindowEnded",
    "decode", "decode_all", "SEND_RECORDS",
]


class UnknownRecord(ValueError):
    """A record this version of cascade cannot read (written by a newer or
    an incompatible older one)."""


# -- shard records: one send or one recipient ----------------------------------------
class SendStarted(NamedTuple):
    send: int
    template: str
    version: int
    recipient: str
    data: bytes | None  # msgpack of the send's data
    groups: tuple[str, ...]  # counter groups: "t:<template>", and "c:<campaign>" for a campaign's send
    at: float
    idempotency: tuple[str, bytes, float] | None  # (key, digest of the request, expiry)
    campaign_row: tuple[str, int] | None  # (campaign, row): the row has started
    tag: int = 1


class StepFired(NamedTuple):
    """Step `step` (0-based) was handed to its channel; if it waits, its window opens at `at`."""
    send: int
    step: int
    at: float
    tag: int = 2


class StepDeferred(NamedTuple):
    """Step `step` fell due inside the recipient's quiet hours (rule 12): it
    fires at `until` instead, and its window opens then."""
    send: int
    step: int
    until: float
    at: float
    tag: int = 12


class SendOrdered(NamedTuple):
    """An engagement-ordered send's channel order (rule 14), decided when it
    started: template step indexes in the send's own order, and the sampled
    score of each."""
    send: int
    order: tuple[int, ...]
    scores: tuple[float, ...]
    at: float
    tag: int = 13


class StepSkipped(NamedTuple):
    send: int
    step: int
    reason: str  # no_address | opted_out
    at: float
    tag: int = 3


class WindowEnded(NamedTuple):
    """The waiting step's window closed without its stop condition: it escalates."""
    send: int
    step: int
    at: float
    tag: int = 4


class DeliveryAnswered(NamedTuple):
    send: int
    step: int
    ok: bool
    reason: str | None
    attempts: int  # the provider's tries; more than 1: it retried (history)
    at: float
    tag: int = 5


class SignalApplied(NamedTuple):
    send: int
    step: int
    kind: int  # index into channels.SIGNALS
    signalled_at: float  # the event's `at` (metrics and views)
    at: float
    tag: int = 6


class StepFailed(NamedTuple):
    """A fired step cannot reach the recipient (provider refused it, or a
    `failed` signal came): it stops waiting (rule 5)."""
    send: int
    step: int
    reason: str
    at: float
    tag: int = 7


class SendStopped(NamedTuple):
    """Signal `kind` on step `step` met its stop condition: the chain ends."""
    send: int
    step: int
    kind: int
    at: float
    tag: int = 8


class SendCancelled(NamedTuple):
    send: int
    at: float
    tag: int = 9


class SendFinished(NamedTuple):
    """Every step has fired and answered: completed, or failed if none was delivered."""
    send: int
    status: int  # sequence.COMPLETED | sequence.FAILED_SEND
    at: float
    tag: int = 10


class RecipientPut(NamedTuple):
    recipient: str
    fields: dict[str, Any]  # validated API fields
    replace: bool  # PUT replaces every field; a send's inline recipient only those it names
    at: float
    tag: int = 11


class ShardBatch(NamedTuple):
    """What one shard applied in one batch, in order."""
    writer: int  # the engine shard that wrote it (recovery: which snapshot covers it)
    records: tuple[Any, ...]  # encoded shard records
    tag: int = 19


# -- front records: templates, the clock, campaigns, idempotency ------------------------
class TemplatePut(NamedTuple):
    template: str
    version: int
    body: dict[str, Any]
    created: float
    updated: float
    tag: int = 20


class TemplateDeleted(NamedTuple):
    template: str
    tag: int = 21


class ClockMoved(NamedTuple):
    """A manual or scaled clock reached `at` (it resumes there after a restart)."""
    at: float
    tag: int = 22


class ShardLayout(NamedTuple):
    """The engine that writes the records after this one has `shards`
    shards: replay routes a shard's records by their writer only when
    the layout it replays into is the same (written at every start)."""
    shards: int
    tag: int = 28


class CampaignCreated(NamedTuple):
    campaign: str
    template: str
    version: int
    name: str | None
    scheduled_at: float
    created_at: float
    rows: str | bytes  # rows file name, or the rows' frames inline
    n_rows: int
    rejected: int
    data: bytes | None
    tag: int = 23


class CampaignEnded(NamedTuple):
    campaign: str
    status: str  # completed | cancelled
    at: float
    tag: int = 24


class ThrottleKept(NamedTuple):
    """Snapshot only: when the latest sends of a throttled template started
    for a recipient (rule 13), so the limit holds across a restart."""
    recipient: str
    template: str
    starts: tuple[float, ...]
    tag: int = 26


class EngagementKept(NamedTuple):
    """Snapshot only: an engagement record (rule 14) of a recipient, or of a
    template's whole population: per channel, messages sent and how many
    met their stop condition within the window."""
    scope: str  # "recipient" | "template"
    name: str
    counts: dict[str, list[int]]
    tag: int = 27


class SeriesKept(NamedTuple):
    """A cluster partition's stats series (engine/series.py bytes), journaled every save interval and
    kept in its snapshots, so the partition's next owner goes on with its minutes. The last one wins."""
    ring: bytes
    tag: int = 29


class IdempotencyKept(NamedTuple):
    """Snapshot only: a live idempotency key and the send it names."""
    key: str
    digest: bytes
    send: int | None
    expires: float
    tag: int = 25


Record = Any  # any of the above; typed loosely because NamedTuples share no base but tuple
SEND_RECORDS = (SendStarted, StepFired, StepSkipped, WindowEnded, DeliveryAnswered, SignalApplied, StepFailed,
                SendStopped, SendCancelled, SendFinished, StepDeferred, SendOrdered)
_TYPES: dict[int, Any] = {cls._field_defaults["tag"]: cls for cls in (
    *SEND_RECORDS, RecipientPut, ShardBatch, TemplatePut, TemplateDeleted, ClockMoved, CampaignCreated,
    CampaignEnded, IdempotencyKept, ThrottleKept, EngagementKept, ShardLayout, SeriesKept)}


_ARITY = {cls: len(cls._fields) for cls in _TYPES.values()}
_tuple_new = tuple.__new__


def decode(raw: Any) -> Record:
    """A record from its encoding (a tuple, as the journal gives it back).
    Replay decodes every record: this skips the NamedTuple's Python-level
    constructor and checks the field count itself."""
    try:
        cls = _TYPES[raw[-1]]
    except (KeyError, TypeError, IndexError):
        cls = None
    if cls is None or len(raw) != _ARITY[cls]:
        raise UnknownRecord(f"unknown record {str(raw)[:80]}: written by another version of cascade")
    return _tuple_new(cls, raw)


def decode_all(raws: Any) -> list[Record]:
    """`decode` of every record of a batch, in one loop (replay's inner loop)."""
    out: list[Record] = []
    append = out.append
    types, arity = _TYPES, _ARITY
    for raw in raws:
        try:
            cls = types[raw[-1]]
            whole = len(raw) == arity[cls]
        except (KeyError, TypeError, IndexError):
            whole = False
        if not whole:
            decode(raw)  # raises, naming the record
        append(_tuple_new(cls, raw))
    return out
