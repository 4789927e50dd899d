"""A send actor's state: a small slotted object, and the counters it bumps.

One `Send` per send, active or retained; `evolve.py` is the only code that
changes one, `sequence.py` the only code that decides what happens to one.
Step indexes are 0-based inside; the API numbers steps from 1.
"""

from __future__ import annotations

from typing import Any

from .recipients import Recipient
from .templates import TemplateVersion

__all__ = [
    "ACTIVE", "STOPPED", "COMPLETED", "CANCELLED", "FAILED_SEND", "THROTTLED", "SEND_STATUS",
    "PENDING", "WAITING", "FIRED", "STEP_STOPPED", "SKIPPED", "STEP_FAILED", "STEP_CANCELLED", "DEFERRED",
    "STEP_STATUS", "REQUESTED", "C_SKIPPED", "C_STOPPED", "C_ESCALATED", "C_FAILED", "C_DEFERRED", "STEP_COLUMNS",
    "S_STARTED", "ORDER_KEY",
    "DELIVERED_ANY", "SNAPSHOT_MARK", "REASON_KEY", "FIRED_KEY", "OPENED_KEY",
    "FAILED_AT_KEY", "RETRIES_KEY", "DEFERRED_KEY", "LATE_OPENING_S", "Counters", "Send",
]

# Send status
ACTIVE, STOPPED, COMPLETED, CANCELLED, FAILED_SEND, THROTTLED = range(6)
SEND_STATUS = ("active", "stopped", "completed", "cancelled", "failed", "throttled")

# Step status, 4 bits each in Send.steps
PENDING, WAITING, FIRED, STEP_STOPPED, SKIPPED, STEP_FAILED, STEP_CANCELLED, DEFERRED = range(8)
STEP_STATUS = ("pending", "waiting", "fired", "stopped", "skipped", "failed", "cancelled", "deferred")

# Columns of a step counter row; a signal of kind k counts in column k + 1.
REQUESTED, C_DELIVERED, C_VIEWED, C_CLICKED, C_FAILED, C_SKIPPED, C_STOPPED, C_ESCALATED, C_DEFERRED = range(9)
STEP_COLUMNS = ("requested", "delivered", "viewed", "clicked", "failed", "skipped", "stopped", "escalated", "deferred")
S_STARTED = 0  # column of a send counter row; the others are indexed by send status

# Bits of Send.sig: 4 signal bits per step (kind k of step i at bit 4i+k).
# Bits of Send.answers: one "channel answered" bit per step, then "some step
# was delivered"; kept apart from `sig` so both stay small cached ints. Bit 5
# belongs to the shard (which snapshot has written this send), not to the rules.
DELIVERED_ANY = 1 << 4
SNAPSHOT_MARK = 1 << 5
REASON_KEY = 16  # notes key of step i's skip/failure reason: REASON_KEY + i
FIRED_KEY = 24  # notes key of the time step i (> 0, in a sequence) fired
OPENED_KEY = 28  # notes key of when step i's window opened, when that was well after it fired
FAILED_AT_KEY = 32  # notes key of when step i failed (history)
RETRIES_KEY = 36  # notes key of step i's answer after retries: (at, attempts) (history)
DEFERRED_KEY = 40  # notes key of step i's deferral: (deferred at, until) (quiet hours, history)
ORDER_KEY = "order"  # notes key of an engagement-ordered send's channel scores, in its own step order
# A window opening this much later than its step fired is noted, so the view
# of a closed window shows its real deadline. Not less: a healthy provider
# answers within milliseconds, and a note costs most sends a notes dict
# (~230 B) they would not otherwise have; a view is then off by less than this.
LATE_OPENING_S = 0.25


class Counters:
    """Per-step counters of one group (a template, or a campaign) for one
    template version's steps, plus the group's send outcome counters."""

    __slots__ = ("group", "sends", "steps")

    def __init__(self, group: str, sends: list[int], steps: tuple[list[int], ...]) -> None:
        self.group = group
        self.sends = sends  # started, stopped, completed, cancelled, failed
        self.steps = steps


class Send:
    """One send actor. Rarely used facts live in `notes`, created on first
    use, so an active send that nothing happened to stays small: fired
    times of later steps (key 24+step), signal times (key 4*step+kind, like the
    bits of `sig`), skip/failure reasons (key 16+step), "stoppedBy" (as
    4*step+kind), "finished". Int keys spare a tuple a signal."""

    __slots__ = ("key", "tpl", "recipient", "data", "created", "status", "current", "steps",
                 "sig", "answers", "deadline", "counters", "notes")

    def __init__(self, key: int, tpl: TemplateVersion, recipient: Recipient, data: bytes | None,
                 created: float, counters: tuple[Counters, ...]) -> None:
        self.key = key
        self.tpl = tpl
        self.recipient = recipient
        self.data = data  # msgpack bytes: about 8x smaller than the dicts
        self.created = created
        self.status = ACTIVE
        self.current = 0
        self.steps = 0
        self.sig = 0
        self.answers = 0
        self.deadline: float | None = None
        self.counters = counters
        self.notes: dict[Any, Any] | None = None

    def step_status(self, i: int) -> int:
        return (self.steps >> (4 * i)) & 15

    def set_step(self, i: int, status: int) -> None:
        self.steps = (self.steps & ~(15 << (4 * i))) | (status << (4 * i))

    def has_signal(self, i: int, kind: int) -> bool:
        return bool(self.sig & (1 << (4 * i + kind)))

    def answered(self, i: int) -> bool:
        return bool(self.answers & (1 << i))

    def get(self, key: Any) -> Any:
        return self.notes.get(key) if self.notes is not None else None

    @property
    def finished(self) -> float | None:
        return self.get("finished")  # type: ignore[no-any-return]

    def fired_at(self, i: int) -> float | None:
        """A step fired at the send's creation has no note of it (most do)."""
        if self.step_status(i) in (PENDING, SKIPPED, DEFERRED):
            return None
        at: float | None = self.get(FIRED_KEY + i)
        return self.created if at is None else at

    def window_deadline(self, i: int) -> float | None:
        """When step i's window closes (or closed): counted from when its
        channel accepted the message, which for a provider that answers
        later than at once is after the step fired."""
        if self.step_status(i) == WAITING:
            return self.deadline
        step = self.tpl.steps[i]
        fired = self.fired_at(i)
        if fired is None or step.stop_rank < 0 or not self.tpl.sequence:
            return None
        opened = self.get(OPENED_KEY + i)
        return (fired if opened is None else opened) + step.wait_s

    def note(self, key: Any, value: Any) -> None:
        if self.notes is None:
            self.notes = {}
        self.notes[key] = value
