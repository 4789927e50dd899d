"""A shard: one pykka actor hosting many send actors, their timers, their
recipients' inboxes and their counters.

The shard processes one batch of commands at a time on its own thread, so a
send never sees two messages at once. For each command it runs the pure
state machine (`sequence.py`) and carries out the effects: in-app delivery
into the inbox, synchronous providers inline, asynchronous ones handed to
the delivery dispatcher in one submission per batch, timers on its wheel.
Replies are resolved after the batch, one thread hop per waiting event loop.
`ShardState` is plain data plus behaviour; the actor is a thin wrapper, so
the supervisor can restart a crashed actor over the same state.
"""

from __future__ import annotations

import logging
from bisect import bisect_left
from collections import deque
from typing import Any, Callable, Mapping

import pykka

from .channels import SIGNALS
from .counters import CounterBook
from .errors import AlreadyFinished, CascadeError, NotFound
from .ids import format_message_id, format_send_id
from .inbox import list_inbox, remove_from_inbox
from .providers.base import DeliveryOutcome, OutgoingMessage, Provider
from .recipients import Recipient
from .reply import Reply, resolve_batch
from .sequence import (
    DELIVER, SCHEDULE, UNSCHEDULE, Send, SignalOutcome,
    cancel, delivery_result, signal, start, window_ended,
)
from .shard_stats import LATENESS_BUCKETS, ShardStats
from .templates import TemplateVersion
from .timers import TimerWheel
from .views import decode_data, send_view

__all__ = ["Command", "ShardActor", "ShardState", "SubmitJobs"]

_log = logging.getLogger("cascade.shard")
_INBOX_OK = DeliveryOutcome(True)
_SEND_ID_LEN = len(format_send_id(0))
_ACCEPTED, _DUPLICATE = SignalOutcome.ACCEPTED, SignalOutcome.DUPLICATE
_UNKNOWN, _UNSUPPORTED = SignalOutcome.UNKNOWN_MESSAGE, SignalOutcome.UNSUPPORTED


def _render(arg: tuple[Send, Any]) -> Any:
    send, content = arg
    return content.render(decode_data(send), send.recipient.view())

# (operation, payload, reply or None)
Command = tuple[str, Any, Any]
# dispatcher.submit(jobs, on_results)
SubmitJobs = Callable[[list[tuple[str, OutgoingMessage, Any]], Callable[[list[tuple[Any, DeliveryOutcome]]], None]], None]


class ShardState:
    def __init__(self, index: int, clock: Any, providers: Mapping[str, Provider], retain_s: float,
                 submit_jobs: SubmitJobs | None, on_async_results: Callable[[list[tuple[Any, DeliveryOutcome]]], None],
                 inbox_listener: Callable[[str], None] | None = None) -> None:
        self.index = index
        self.clock = clock
        self.providers = providers
        self.retain_s = retain_s
        self.submit_jobs = submit_jobs
        self.on_async_results = on_async_results
        self.inbox_listener = inbox_listener  # sees each in-app message id as it lands (tests)
        self.sends: dict[int, Send] = {}
        self.recipients: dict[str, Recipient] = {}
        self.wheel: TimerWheel[Send] = TimerWheel()
        self.book = CounterBook()
        self.retained: deque[tuple[float, Send]] = deque()
        self.stats = ShardStats()
        self.active = 0
        self.processed = 0
        self._local: deque[tuple[Send, int, DeliveryOutcome]] = deque()
        self._jobs: list[tuple[str, OutgoingMessage, Any]] = []
        self._ops: dict[str, Callable[[Any, float], Any]] = {
            "start": self._start, "signals": self._signals, "results": self._results,
            "get_send": self._get_send, "cancel": self._cancel, "fire": self._fire_until,
            "put_recipient": self._put_recipient, "get_recipient": self._get_recipient,
            "inbox": self._inbox, "inbox_signal": self._inbox_signal,
            "totals": self._totals, "stats": self._stats, "tick": self._tick,
        }

    # -- the batch loop -------------------------------------------------
    def process(self, commands: list[Command]) -> None:
        now = self.clock.now()
        self._fire_due(now)
        replies: list[Reply] = []
        for op, payload, reply in commands:
            try:
                result = self._ops[op](payload, now)
            except CascadeError as exc:
                if reply is not None:
                    reply.set_error(exc)
            except Exception as exc:  # a bug must not take the shard down
                _log.exception("shard %d failed on %s", self.index, op)
                if reply is not None:
                    reply.set_error(exc)
            else:
                if reply is not None:
                    reply.set(result)
            if reply is not None:
                replies.append(reply)
        self.processed += len(commands)
        if self._jobs and self.submit_jobs is not None:
            jobs, self._jobs = self._jobs, []
            self.submit_jobs(jobs, self.on_async_results)
        resolve_batch(replies)

    # -- effects --------------------------------------------------------
    def _run(self, send: Send, effects: list[Any], now: float) -> None:
        """Carry out a transition's effects, then the answers of the channels
        that answered at once (in-app, synchronous providers): queued rather
        than nested, so every transition sees the effects before it done."""
        local = self._local
        while True:
            for effect in effects:
                tag = effect[0]
                if tag == DELIVER:
                    self._deliver(send, effect[1])
                elif tag == SCHEDULE:
                    self.wheel.schedule(send, effect[1])
                elif tag == UNSCHEDULE:
                    self.wheel.cancel(send, effect[1])
                else:  # FINISH
                    self.active -= 1
                    self.retained.append((now + self.retain_s, send))
            if not local:
                return
            send, i, outcome = local.popleft()
            effects = delivery_result(send, i, outcome.ok, outcome.reason, now)

    def _deliver(self, send: Send, i: int) -> None:
        step = send.tpl.steps[i]
        if step.channel == "inapp":
            rcpt = send.recipient
            if rcpt.inbox is None:
                rcpt.inbox = []
            rcpt.inbox.append(send)  # one in-app step per template: the send names the message
            if self.inbox_listener is not None:
                self.inbox_listener(format_message_id(send.key, i + 1))
            self._local.append((send, i, _INBOX_OK))
            return
        provider = self.providers[step.channel]
        message_id = format_message_id(send.key, i + 1)
        content = step.content
        message = OutgoingMessage(
            message_id, message_id[:_SEND_ID_LEN], send.tpl.id, send.tpl.version, i + 1, step.channel,
            send.recipient.view(), content.source, _render if content.dynamic else None, (send, content))
        if provider.synchronous:
            outcome = provider.deliver_now(message)
            self.stats.deliveries[step.channel][outcome.ok] += 1
            self._local.append((send, i, outcome))
        else:
            self._jobs.append((step.channel, message, (send.key, i)))

    # -- timers and retention -----------------------------------------------
    def _fire_due(self, now: float) -> None:
        due = self.wheel.pop_due(now)
        if due:
            counts = self.stats.lateness_counts
            late = 0.0
            for send in due:
                lateness = now - send.deadline  # type: ignore[operator]
                late += lateness
                counts[bisect_left(LATENESS_BUCKETS, lateness)] += 1
                self._run(send, window_ended(send, now), now)
            self.stats.lateness_sum += late
        retained = self.retained
        while retained and retained[0][0] <= now:
            _, send = retained.popleft()
            if self.sends.get(send.key) is send:
                del self.sends[send.key]
                remove_from_inbox(send)

    def _fire_until(self, until: float, now: float) -> float | None:
        """Fire everything due by `until` (manual clock); answer the next deadline."""
        self._fire_due(until)
        return self.wheel.next_deadline()

    def _tick(self, _: Any, now: float) -> None:
        return None  # `process` already fired what was due

    # -- commands -----------------------------------------------------------
    def recipient(self, rid: str) -> Recipient:
        r = self.recipients.get(rid)
        if r is None:
            r = self.recipients[rid] = Recipient(rid)
        return r

    def _start(self, payload: tuple[Any, ...], now: float) -> Any:
        key, tpl, rid, update, data, groups, origin, want_view = payload
        tpl_v: TemplateVersion = tpl
        rcpt = self.recipient(rid)
        if update is not None:
            update.merge_into(rcpt)
        send = Send(key, tpl_v, rcpt, data, now, self.book.counters_of(groups, tpl_v), origin)
        self.sends[key] = send
        self.active += 1
        self._run(send, start(send, now), now)
        return send_view(send) if want_view else None

    def _find(self, key: int) -> Send:
        send = self.sends.get(key)
        if send is None:
            raise NotFound(f"send {format_send_id(key)} does not exist")
        return send

    def _get_send(self, key: int, now: float) -> dict[str, Any]:
        return send_view(self._find(key))

    def _cancel(self, key: int, now: float) -> dict[str, Any]:
        send = self._find(key)
        effects = cancel(send, now)
        if effects is None:
            raise AlreadyFinished(f"send {format_send_id(key)} has already finished ({send_view(send)['status']})")
        self._run(send, effects, now)
        return send_view(send)

    def _signals(self, items: list[tuple[int, int, int | None, str | None, int, float | None]], now: float) -> list[tuple[int, int, str]]:
        """Apply signals; answer (index, outcome, message) for each that was not plainly accepted."""
        problems = []
        sends = self.sends
        counts = self.stats.signals
        for index, key, i, channel, kind, at in items:
            send = sends.get(key)
            if send is None:
                problems.append((index, _UNKNOWN, f"send {format_send_id(key)} is unknown"))
                continue
            steps = send.tpl.steps
            if i is None:
                i = next((s.number - 1 for s in steps if s.channel == channel), -1)
                if i < 0:
                    problems.append((index, _UNKNOWN, f"send {format_send_id(key)} has no {channel} step"))
                    continue
            if 0 <= i < len(steps) and not (steps[i].signal_mask >> kind) & 1:
                counts[kind][_UNSUPPORTED] += 1
                problems.append((index, _UNSUPPORTED, f"{steps[i].channel} emits no {SIGNALS[kind]} signal"))
                continue
            outcome, effects = signal(send, i, kind, now if at is None else at, now)
            counts[kind][outcome] += 1
            if outcome == _ACCEPTED:
                if effects:
                    self._run(send, effects, now)
            elif outcome == _DUPLICATE:
                problems.append((index, outcome, ""))
            else:
                problems.append((index, outcome, f"message {format_message_id(key, i + 1)} was never sent"))
        return problems

    def _results(self, results: list[tuple[Any, DeliveryOutcome]], now: float) -> None:
        for (key, i), outcome in results:
            send = self.sends.get(key)
            if send is not None:
                self._run(send, delivery_result(send, i, outcome.ok, outcome.reason, now), now)

    def _put_recipient(self, payload: tuple[str, Any, bool], now: float) -> dict[str, Any]:
        rid, update, replace = payload
        rcpt = self.recipient(rid)
        update.merge_into(rcpt, replace=replace)
        return rcpt.view()

    def _get_recipient(self, rid: str, now: float) -> dict[str, Any]:
        rcpt = self.recipients.get(rid)
        if rcpt is None:
            raise NotFound(f"recipient {rid!r} does not exist")
        return rcpt.view()

    def _inbox(self, payload: tuple[str, int, str | None], now: float) -> dict[str, Any]:
        rid, limit, before = payload
        page, listed = list_inbox(self.recipients.get(rid), limit, before)
        for send, i in listed:  # listing a message marks it delivered
            outcome, effects = signal(send, i, 0, now, now)
            if outcome == SignalOutcome.ACCEPTED:
                self.stats.signal(0, outcome)
                if effects:
                    self._run(send, effects, now)
        return page

    def _inbox_signal(self, payload: tuple[str, int, int, int], now: float) -> None:
        rid, key, i, kind = payload
        send = self.sends.get(key)
        if (send is None or send.recipient.id != rid or not 0 <= i < len(send.tpl.steps)
                or send.tpl.steps[i].channel != "inapp" or send.step_status(i) == 0):
            raise NotFound(f"message {format_message_id(key, i + 1)} is not in the inbox of {rid!r}")
        outcome, effects = signal(send, i, kind, now, now)
        self.stats.signal(kind, outcome)
        if effects:
            self._run(send, effects, now)

    def _totals(self, groups: list[str] | None, now: float) -> Any:
        return self.book.totals(groups)

    def _stats(self, _: Any, now: float) -> dict[str, Any]:
        return self.stats.snapshot(active=self.active, timers=len(self.wheel), stored=len(self.sends),
                                   recipients=len(self.recipients))


class ShardActor(pykka.ThreadingActor):
    """The thread a `ShardState` runs on; a message is a batch of commands."""

    def __init__(self, state: ShardState) -> None:
        super().__init__()
        self.state = state

    def on_receive(self, message: Any) -> Any:
        self.state.process(message)
        return None

