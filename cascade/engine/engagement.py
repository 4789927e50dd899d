"""Engagement order (API.md rule 14): per recipient and channel, how often
a message was sent and how often it met its stop condition within its
window; per template and channel, the same for its whole population; and
the channel order a new send takes from them.

The estimate is a Beta-Bernoulli posterior per channel: the template's
population rate gives the prior (worth `PRIOR_WEIGHT` messages, so a
person's own few answers soon outweigh it), the person's own record
updates it. The order is a Thompson sample: one draw from each channel's
posterior, best first. A channel with little data has a wide posterior
and still comes first now and then, so the order keeps learning instead of
freezing on an early guess; one with much data is drawn near its rate.
Draws come from a generator seeded by the send key: the same send always
gets the same order, and the order is journaled (`SendOrdered`) so replay
does not draw again.

Records are derived state like timers: `fired` and `signal` run from the
shard's apply path, live and at replay alike. Population counts are per
shard (each sees a random share of the recipients), which is enough for a
prior.
"""

from __future__ import annotations

import random
from typing import Any, Iterator

from ..domain.channels import FAILED
from ..domain.records import EngagementKept, SignalApplied
from ..domain.send import Send
from ..domain.templates import TemplateVersion

__all__ = ["EngagementBook", "PRIOR_WEIGHT"]

PRIOR_WEIGHT = 4.0  # how many messages' worth of evidence the population prior is


class EngagementBook:
    def __init__(self) -> None:
        self.people: dict[str, dict[str, list[int]]] = {}  # recipient -> channel -> [sent, engaged]
        self.population: dict[str, dict[str, list[int]]] = {}  # template -> channel -> [sent, engaged]

    def order(self, key: int, rid: str, tpl: TemplateVersion) -> tuple[tuple[int, ...], tuple[float, ...]]:
        """The send's order (indexes of the template's steps) and each one's sampled score."""
        draw = random.Random(key)
        person = self.people.get(rid, {})
        crowd = self.population.get(tpl.id, {})
        scored = []
        for i, step in enumerate(tpl.steps):
            p_sent, p_engaged = crowd.get(step.channel, (0, 0))
            rate = (p_engaged + 1) / (p_sent + 2)  # Laplace: never exactly 0 or 1
            sent, engaged = person.get(step.channel, (0, 0))
            alpha = PRIOR_WEIGHT * rate + engaged
            beta = PRIOR_WEIGHT * (1 - rate) + (sent - engaged)
            scored.append((draw.betavariate(alpha, beta), i))
        scored.sort(key=lambda s: (-s[0], s[1]))
        return tuple(i for _, i in scored), tuple(round(score, 4) for score, _ in scored)

    def fired(self, send: Send, i: int) -> None:
        channel = send.tpl.steps[i].channel
        _row(self.people, send.recipient.id, channel)[0] += 1
        _row(self.population, send.tpl.id, channel)[0] += 1

    def signal(self, send: Send, rec: SignalApplied, sig_before: int) -> None:
        """After `rec` was applied: count the message engaged the first time
        a signal meets its stop condition within its window."""
        i, kind = rec.step, rec.kind
        step = send.tpl.steps[i]
        rank = step.engage_rank
        if rank < 0 or kind == FAILED or kind < rank:
            return
        met_before = (sig_before >> (4 * i)) & 0b111 & ~((1 << rank) - 1)  # engagement bits of rank >= its own
        fired = send.fired_at(i)
        if met_before or fired is None or rec.signalled_at > fired + step.engage_s:
            return
        _row(self.people, send.recipient.id, step.channel)[1] += 1
        _row(self.population, send.tpl.id, step.channel)[1] += 1

    def records(self) -> Iterator[EngagementKept]:
        for rid, counts in self.people.items():
            yield EngagementKept("recipient", rid, {c: list(v) for c, v in counts.items()})
        for template, counts in self.population.items():
            yield EngagementKept("template", template, {c: list(v) for c, v in counts.items()})

    def load(self, rec: Any) -> None:
        """Add a snapshot's record (added: the snapshots of another layout merge)."""
        table = self.people if rec.scope == "recipient" else self.population
        for channel, (sent, engaged) in rec.counts.items():
            row = _row(table, rec.name, channel)
            row[0] += sent
            row[1] += engaged


def _row(table: dict[str, dict[str, list[int]]], name: str, channel: str) -> list[int]:
    counts = table.get(name)
    if counts is None:
        counts = table[name] = {}
    row = counts.get(channel)
    if row is None:
        row = counts[channel] = [0, 0]
    return row
