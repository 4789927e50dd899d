"""A shard: one pykka actor hosting many send actors, their timers, their
recipients' inboxes and their counters.

The shard processes one batch of commands at a time on its own thread, so a
send never sees two messages at once. Each command is *decided* by the pure
rules (`domain/sequence.py`), which emit records; `apply` is the one place
where a record changes state (the send through `domain/evolve.py`, and what
the shard derives from it: timers, the active count, retention, inboxes,
and the snapshot's copy-on-write). Live, each emitted record is also
journaled, and a fired step of a provider channel is handed to its provider;
replies are resolved, and asynchronous deliveries handed over, only once the
batch's records are durable. Recovery applies the journal's records and
nothing else (`durability/loader.py`).
`ShardState` is plain data plus behaviour; the actor is a thin wrapper, so
the supervisor can restart a crashed actor over the same state.
"""

from __future__ import annotations

import logging
from bisect import bisect_left
from collections import deque
from typing import Any, Callable, Mapping

import pykka

from ..delivery.providers.base import DeliveryOutcome, OutgoingMessage, Provider
from ..domain.bitmaps import set_bit
from ..domain.channels import SIGNALS
from ..domain.errors import AlreadyFinished, CascadeError, NotFound, Overloaded
from ..domain.evolve import EVOLVE
from ..domain.ids import format_message_id, format_send_id
from ..domain.recipients import Recipient, RecipientUpdate, without_subscriptions
from ..domain.records import RecipientPut, SendOrdered, SendStarted, ShardBatch, SignalApplied, StepFired
from ..domain.send import ACTIVE, THROTTLED, Send
from ..domain.sequence import SignalOutcome, cancel, closed_before, delivery_result, signal, start, timer_due
from ..domain.templates import TemplateRegistry, TemplateVersion
from ..storage.journal import Journal
from .commands import Command
from .counters import CounterBook
from .engagement import EngagementBook
from .inbox import page_of, page_view, remove_from_inbox
from .mailbox import Mailbox
from .outstanding import Outstanding
from .reply import Reply, resolve_batch
from .shard_snapshot import ShardSnapshot
from .shard_stats import LATENESS_BUCKETS, ShardStats
from .throttle import ThrottleBook
from .timers import TimerWheel
from .views import SendQuery, decode_data, send_view

__all__ = ["ShardActor", "ShardState", "SubmitJobs"]

_log = logging.getLogger("cascade.shard")
_SEND_ID_LEN = len(format_send_id(0))
_ACCEPTED, _DUPLICATE = SignalOutcome.ACCEPTED, SignalOutcome.DUPLICATE
_UNKNOWN, _UNSUPPORTED = SignalOutcome.UNKNOWN_MESSAGE, SignalOutcome.UNSUPPORTED


def _render(arg: tuple[Send, Any]) -> Any:
    send, content = arg
    return content.render(decode_data(send), send.recipient.view())

# dispatcher.submit(jobs, on_results)
SubmitJobs = Callable[[list[tuple[str, OutgoingMessage, Any]], Callable[[list[tuple[Any, DeliveryOutcome]]], None]], None]


class ShardState:
    def __init__(self, index: int, clock: Any, providers: Mapping[str, Provider], retain_s: float,
                 submit_jobs: SubmitJobs | None, on_async_results: Callable[[list[tuple[Any, DeliveryOutcome]]], None],
                 journal: Journal | None = None,
                 templates: TemplateRegistry | None = None, mailbox: Mailbox | None = None,
                 in_flight: Callable[[], float | None] = lambda: None,
                 outstanding: Outstanding | None = None) -> None:
        self.index = index
        self.mailbox = mailbox if mailbox is not None else Mailbox()
        self.in_flight = in_flight  # oldest arrival of a request not yet admitted or answered
        self.outstanding = outstanding if outstanding is not None else Outstanding()
        self._answered = 0  # provider answers applied in this batch
        self.journal = journal
        self.templates = templates if templates is not None else TemplateRegistry()
        self.send_mark = 0  # the snapshot mark of the latest snapshot (see shard_snapshot.py)
        self.rcpt_mark = 0
        self._snap: ShardSnapshot | None = None
        self._records: list[Any] | None = None
        self._appended = 0  # journal appends made, and made durable: equal when nothing is pending
        self._durable = 0
        self.clock = clock
        self.providers = providers
        self.retain_s = retain_s
        self.submit_jobs = submit_jobs
        self.on_async_results = on_async_results
        # (recipient id, message id, "message" | "viewed" | "clicked") as an inbox changes, live
        # only (not at replay); set by Engine.watch_inbox. It runs inside the batch: it must be quick.
        self.inbox_changes: Callable[[str, str, str], None] | None = None
        self.sends: dict[int, Send] = {}
        self.recipients: dict[str, Recipient] = {}
        self.wheel: TimerWheel[Send] = TimerWheel()
        self.book = CounterBook()
        self.throttle = ThrottleBook()
        self.engagement = EngagementBook()
        self.campaign_rows: dict[str, bytearray] = {}  # campaign id -> bitmap of its rows started here
        self.retained: deque[tuple[float, Send]] = deque()
        self.stats = ShardStats()
        self.active = 0
        self.unanswered: list[tuple[int, int]] = []  # after recovery: messages to hand over again
        self._shape: tuple[Any, ...] = ()  # (template, version, groups) of the last send started
        self._shape_of: tuple[TemplateVersion | None, Any] = (None, None)
        self._local: deque[tuple[Send, int, DeliveryOutcome]] = deque()
        self._jobs: list[tuple[str, OutgoingMessage, Any]] = []
        self._stamp: float | None = None  # when the command being run reached a front door (None: internal)
        self._fired_to = float("-inf")  # every timer due by this time has fired
        self._ops: dict[str, Callable[[Any, float], Any]] = {
            "start": self._start, "signals": self._signals, "results": self._results,
            "get_send": self._get_send, "cancel": self._cancel, "fire": self._fire_until,
            "put_recipient": self._put_recipient, "get_recipient": self._get_recipient,
            "drop_web_push": self._drop_web_push,
            "inbox": self._inbox, "inbox_signal": self._inbox_signal,
            "totals": self._totals, "stats": self._stats, "tick": self._tick,
            "snapshot_begin": self._snapshot_begin, "snapshot_slice": self._snapshot_slice,
            "redrive": self._redrive, "cancel_campaign": self._cancel_campaign,
            "campaign_rows": self._campaign_rows, "keep_campaign_rows": self._keep_campaign_rows,
            "list_sends": self._list_sends, "inbox_peek": self._inbox_peek,
        }

    # -- the one apply path -------------------------------------------------------
    def apply(self, rec: Any) -> Send | None:
        """Change state by one record; the send it concerns (None: unknown).
        Journal replay runs this for every record: keep it flat."""
        kind = type(rec)
        if kind is SendStarted:
            return self._apply_started(rec)
        if kind is RecipientPut:
            rcpt = self.recipient(rec.recipient)
            if self._snap is not None:
                self._snap.touch_recipient(rcpt)
            RecipientUpdate.trusted(rec.fields).merge_into(rcpt, replace=rec.replace)
            return None
        send = self.sends.get(rec.send)
        if send is None:
            return None
        if self._snap is not None:
            self._snap.touch_send(send)  # copy on write: the snapshot gets it as it was
        before = send.deadline
        active = send.status == ACTIVE
        sig = send.sig
        EVOLVE[kind](send, rec)
        after = send.deadline
        if before != after:
            if before is not None:
                self.wheel.cancel(send, before)
            if after is not None:
                self.wheel.schedule(send, after)
        if active and send.status != ACTIVE:
            self.active -= 1
            self.retained.append((rec.at + self.retain_s, send))
            if send.status == THROTTLED:
                self.throttle.refused(send.recipient.id, send.tpl.id)
        if kind is StepFired:
            tpl = send.tpl
            if tpl.by_engagement:
                self.engagement.fired(send, rec.step)
            if tpl.steps[rec.step].channel == "inapp":
                rcpt = send.recipient
                if self._snap is not None:
                    self._snap.touch_recipient(rcpt)  # its inbox is part of it
                if rcpt.inbox is None:
                    rcpt.inbox = []
                rcpt.inbox.append(send)  # one in-app step per template: the send names the message
        elif kind is SignalApplied:
            if send.tpl.by_engagement:
                self.engagement.signal(send, rec, sig)
        elif kind is SendOrdered:  # its steps are renumbered: so are the rows it counts into
            send.counters = self.book.counters_of(tuple(c.group for c in send.counters), send.tpl)
        return send

    def _apply_started(self, rec: SendStarted) -> Send | None:
        # One unpacking instead of eight field lookups: replay runs this a
        # million times. Its arity is the record's (decode checks it).
        key, template, version, rid, data, groups, at, _idempotency, campaign_row, _tag = rec
        sends = self.sends
        if key in sends:
            return None
        shape = (template, version, groups)
        if shape != self._shape:  # most sends repeat the shape of the one before
            tpl = self.templates.version(template, version)
            self._shape = shape
            self._shape_of = (tpl, self.book.counters_of(tuple(groups), tpl) if tpl is not None else None)
        tpl, counters = self._shape_of
        if tpl is None:
            return None
        if campaign_row is not None:
            campaign, row = campaign_row
            bits = self.campaign_rows.get(campaign)
            if bits is None:
                bits = self.campaign_rows[campaign] = bytearray()
            set_bit(bits, row)
        send = Send(key, tpl, self.recipients.get(rid) or self.recipient(rid), data, at, counters)
        send.answers = self.send_mark  # born after any snapshot in progress began
        sends[key] = send
        self.active += 1
        for c in counters:  # started
            c.sends[0] += 1
        if tpl.throttle is not None:
            self.throttle.started(rid, tpl, at)
        return send

    def _emit(self, rec: Any) -> None:
        """Live: apply a decided record, journal it, and carry out what it asks of the world."""
        send = self.apply(rec)
        if self._records is not None:
            self._records.append(rec)
        if type(rec) is StepFired and send is not None:
            self._deliver(send, rec.step)
        elif self.inbox_changes is not None and type(rec) is SignalApplied and send is not None \
                and 0 < rec.kind < 3 and send.tpl.steps[rec.step].channel == "inapp":  # viewed, clicked
            self.inbox_changes(send.recipient.id, format_message_id(send.key, rec.step + 1), SIGNALS[rec.kind])

    def _answer_local(self, now: float) -> None:
        """Answers of channels that answered at once (synchronous providers),
        decided after the transition that asked for them, not inside it."""
        local = self._local
        while local:
            send, i, outcome = local.popleft()
            delivery_result(send, i, outcome.ok, outcome.reason, now, self._emit, outcome.attempts)

    # -- the batch loop -------------------------------------------------
    def process(self, commands: list[Command]) -> None:
        """Run one batch. Timers fire by the low watermark (API.md rule 11):
        before a command, what fell due before it reached the server; after
        the batch, what fell due before the oldest arrival still queued or
        in flight, or before now if there is none. Late, never wrong."""
        now = self.clock.now()
        self._records = [] if self.journal is not None else None
        fire_due = self._fire_due
        replies: list[Reply] = []
        for op, payload, reply, arrival in commands:
            if op == "snapshot_begin" and (self._records or replies):
                # The snapshot stands at a journal position: what this batch
                # did before it must be journaled before that, or replay
                # would apply it a second time over the snapshot.
                self._commit(replies)
                replies = []
            if arrival is not None:
                fire_due(arrival if arrival < now else now)
            self._stamp = arrival
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
        horizon = now
        # In flight first: a request leaves it only after its commands are posted to the mailboxes
        # (arrivals.py), so one that left after this read is in the mailbox when `taken` looks.
        flying = self.in_flight()
        if flying is not None and flying < horizon:
            horizon = flying
        queued = self.mailbox.taken(len(commands))
        if queued is not None and queued < horizon:
            horizon = queued
        self.stats.watermark_lag = now - horizon
        fire_due(horizon)
        self._commit(replies)
        self._records = None

    def _commit(self, replies: list[Reply]) -> None:
        """Journal the records made so far; once durable, hand over their
        deliveries and answer `replies`."""
        records = self._records
        jobs, self._jobs = self._jobs, []
        answered, self._answered = self._answered, 0
        if records is not None:
            self._records = []
        # A batch that changed nothing still waits for the batches before it
        # to be durable: its answers may show what they did.
        journal = self.journal
        if journal is not None and (records or (self._appended != self._durable and replies)):
            self._appended += 1
            try:
                journal.append([ShardBatch(self.index, tuple(records))] if records else [],
                                    lambda: self._durable_release(replies, jobs, answered))
            except Exception as exc:
                assert records is not None  # entered with records, or with a journal (so records == [])
                # Nothing of this batch is durable, so none of its messages go out: a fenced
                # partition's next owner decides them again from what was acknowledged.
                _log.critical("shard %d could not journal %d records (%d messages not sent): %s",
                              self.index, len(records), len(jobs), exc)
                for reply in replies:
                    reply.set_error(exc)
                self._durable_release(replies, [], answered)
        else:
            self._release(replies, jobs, answered)

    def _durable_release(self, replies: list[Reply], jobs: list[tuple[str, OutgoingMessage, Any]],
                         answered: int) -> None:
        self._durable += 1  # only this callback writes it; only the shard writes _appended
        self._release(replies, jobs, answered)

    def _release(self, replies: list[Reply], jobs: list[tuple[str, OutgoingMessage, Any]], answered: int) -> None:
        """Once the batch is durable: hand over deliveries, answer callers."""
        handed = 0
        if jobs and self.submit_jobs is not None:
            try:
                self.submit_jobs(jobs, self.on_async_results)
                handed = len(jobs)
            except Exception:  # stopping: these are re-driven after the next start
                _log.exception("shard %d could not hand over %d deliveries", self.index, len(jobs))
        self.outstanding.settle(handed, answered)  # handed first: the count cannot touch zero between
        resolve_batch(replies)

    # -- delivery -------------------------------------------------------------
    def _deliver(self, send: Send, i: int) -> None:
        step = send.tpl.steps[i]
        if step.channel == "inapp":  # `apply` put it in the inbox
            if self.inbox_changes is not None:
                self.inbox_changes(send.recipient.id, format_message_id(send.key, i + 1), "message")
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
        if now > self._fired_to:
            self._fired_to = now
        due = self.wheel.pop_due(now)
        if due:
            counts = self.stats.lateness_counts
            late = 0.0
            for send in due:
                lateness = now - send.deadline  # type: ignore[operator]
                late += lateness
                counts[bisect_left(LATENESS_BUCKETS, lateness)] += 1
                timer_due(send, now, self._emit)
                self._answer_local(now)
            self.stats.lateness_sum += late
        retained = self.retained
        while retained and retained[0][0] <= now:
            _, send = retained.popleft()
            if self.sends.get(send.key) is send:
                if self._snap is not None:
                    self._snap.touch_send(send)
                    self._snap.touch_recipient(send.recipient)
                del self.sends[send.key]
                remove_from_inbox(send)

    def _fire_until(self, until: float, now: float) -> float | None:
        """Fire everything due by `until` (manual clock); answer the next deadline."""
        self._fire_due(until)
        return self.wheel.next_deadline()

    def _tick(self, _: Any, now: float) -> None:
        return None  # `process` already fired what was due

    def throttle_window(self, template: str) -> float:
        """How far back a throttle of `template` looks (the longest allowed
        once the template is gone: its sends may be started again by
        replay of an older version)."""
        current = self.templates.current(template)
        return current.throttle[1] if current is not None and current.throttle else 10080 * 60.0

    # -- commands -----------------------------------------------------------
    def recipient(self, rid: str) -> Recipient:
        r = self.recipients.get(rid)
        if r is None:
            r = self.recipients[rid] = Recipient(rid)
            r.mark = self.rcpt_mark  # born after any snapshot in progress began
        return r

    def _start(self, payload: tuple[Any, ...], now: float) -> Any:
        key, tpl, rid, update, data, groups, campaign_row, want_view, idem = payload
        tpl_v: TemplateVersion = tpl
        emit = self._emit
        if update is not None:
            emit(RecipientPut(rid, update.fields, False, now))
        throttled = self.throttle.over(rid, tpl_v, now)
        emit(SendStarted(key, tpl_v.id, tpl_v.version, rid, data, groups, now, idem, campaign_row))
        send = self.sends[key]
        if tpl_v.by_engagement and not throttled:
            order, scores = self.engagement.order(key, rid, tpl_v)
            emit(SendOrdered(key, order, scores, now))
        start(send, now, emit, throttled)
        self._answer_local(now)
        return send_view(send) if want_view else None

    def _find(self, key: int) -> Send:
        send = self.sends.get(key)
        if send is None:
            raise NotFound(f"send {format_send_id(key)} does not exist")
        return send

    def _get_send(self, key: int, now: float) -> dict[str, Any]:
        return send_view(self._find(key))

    def _list_sends(self, query: SendQuery, now: float) -> tuple[list[tuple[float, int, dict[str, Any]]],
                                                                  tuple[float, int] | None]:
        """Up to `query.limit` sends matching it, ordered by (created, key)
        newest first, older than its cursor, as (created, key, view); and
        the point down to which it looked at every send (None: all of them).
        Sends are stored in creation order, so they come newest first but
        in no order among those created at one instant: such a group is
        always looked at whole. Beyond that it looks at no more than
        `query.scan` sends: a bound on the shard's time, whatever the filters."""
        found: list[Send] = []
        looked = 0
        before = query.before
        done_at: float | None = None  # the created time below which it stops
        for send in reversed(self.sends.values()):
            created = send.created
            if done_at is not None and created < done_at:
                break
            if before is not None and (created, send.key) >= before:
                continue
            looked += 1
            if query.matches(send):
                found.append(send)
            if done_at is None and (len(found) >= query.limit or looked >= query.scan):
                done_at = created  # finish this instant's group, then stop
        else:
            done_at = None
        found.sort(key=lambda s: (s.created, s.key), reverse=True)
        page = found[:query.limit]
        if len(found) > query.limit:
            stop: tuple[float, int] | None = (page[-1].created, page[-1].key)
        elif done_at is not None:
            stop = (done_at, -1)  # every send created at done_at or later was looked at
        else:
            stop = None
        return [(s.created, s.key, send_view(s)) for s in page], stop

    def _cancel(self, key: int, now: float) -> dict[str, Any]:
        send = self._find(key)
        if not cancel(send, now, self._emit):
            raise AlreadyFinished(f"send {format_send_id(key)} has already finished ({send_view(send)['status']})")
        return send_view(send)

    def _cancel_campaign(self, group: str, now: float) -> int:
        """Cancel every active send of a campaign (`group` is "c:<id>") here."""
        mine = self.book.sets_with(group)
        doomed = [s for s in self.sends.values() if s.status == ACTIVE and id(s.counters) in mine] if mine else []
        for send in doomed:
            cancel(send, now, self._emit)
        return len(doomed)

    def _campaign_rows(self, campaign_id: str, now: float) -> bytes:
        return bytes(self.campaign_rows.get(campaign_id, b""))

    def _keep_campaign_rows(self, live: set[str], now: float) -> None:
        for cid in [c for c in self.campaign_rows if c not in live]:
            del self.campaign_rows[cid]

    def _signals(self, items: list[tuple[int, int, int | None, str | None, int, float | None]], now: float) -> list[tuple[int, int, str]]:
        """Apply signals; answer (index, outcome, message) for each that was not plainly accepted."""
        stamp = self._stamp
        if stamp is not None and stamp < self._fired_to:
            self._refuse_closed(((key, i, channel, kind) for _, key, i, channel, kind, _ in items), stamp)
        problems = []
        sends = self.sends
        counts = self.stats.signals
        emit = self._emit
        for index, key, i, channel, kind, at in items:
            send = sends.get(key)
            if send is None:
                counts[kind][_UNKNOWN] += 1
                problems.append((index, _UNKNOWN, f"send {format_send_id(key)} is unknown"))
                continue
            steps = send.tpl.steps
            if i is None:
                i = next((s.number - 1 for s in steps if s.channel == channel), -1)
                if i < 0:
                    counts[kind][_UNKNOWN] += 1
                    problems.append((index, _UNKNOWN, f"send {format_send_id(key)} has no {channel} step"))
                    continue
            if 0 <= i < len(steps) and not (steps[i].signal_mask >> kind) & 1:
                counts[kind][_UNSUPPORTED] += 1
                problems.append((index, _UNSUPPORTED, f"{steps[i].channel} emits no {SIGNALS[kind]} signal"))
                continue
            outcome = signal(send, i, kind, now if at is None else at, now, emit)
            counts[kind][outcome] += 1
            if outcome == _ACCEPTED:
                if self._local:
                    self._answer_local(now)
            elif outcome == _DUPLICATE:
                problems.append((index, outcome, ""))
            else:
                problems.append((index, outcome, f"message {format_message_id(key, i + 1)} was never sent"))
        return problems

    def _refuse_closed(self, signals: Any, stamp: float) -> None:
        """Refuse (503, nothing applied) a command stamped before a deadline
        whose window has closed without it (`closed_before`): a forward from
        another node that the owner's allowance did not wait for."""
        for key, i, channel, kind in signals:
            send = self.sends.get(key)
            if send is None:
                continue
            if i is None:
                i = next((s.number - 1 for s in send.tpl.steps if s.channel == channel), -1)
            if closed_before(send, i, kind, stamp):
                self.stats.refused_closed += 1
                raise Overloaded(f"message {format_message_id(key, i + 1)}: its window closed before this "
                                 "signal reached the partition's owner; retry (it will count as late)")

    def _results(self, results: list[tuple[Any, DeliveryOutcome]], now: float) -> None:
        self._answered += len(results)
        for (key, i), outcome in results:
            send = self.sends.get(key)
            if send is not None:
                delivery_result(send, i, outcome.ok, outcome.reason, now, self._emit, outcome.attempts)
                self._answer_local(now)

    def _put_recipient(self, payload: tuple[str, Any, bool], now: float) -> dict[str, Any]:
        rid, update, replace = payload
        self._emit(RecipientPut(rid, update.fields, replace, now))
        return self.recipients[rid].view()

    def _drop_web_push(self, payload: tuple[str, tuple[str, ...]], now: float) -> int:
        """A push service said these subscriptions are gone: drop them, journaled as a RecipientPut."""
        rid, endpoints = payload
        rcpt = self.recipients.get(rid)
        update = without_subscriptions(rcpt, endpoints) if rcpt is not None else None
        if rcpt is None or update is None:
            return 0
        before = len(rcpt.web_push)
        self._emit(RecipientPut(rid, update.fields, False, now))
        return before - len(rcpt.web_push)

    def _get_recipient(self, rid: str, now: float) -> dict[str, Any]:
        rcpt = self.recipients.get(rid)
        if rcpt is None:
            raise NotFound(f"recipient {rid!r} does not exist")
        return rcpt.view()

    def _inbox(self, payload: tuple[str, int, str | None], now: float) -> dict[str, Any]:
        rid, limit, before = payload
        rcpt = self.recipients.get(rid)
        listed, more = page_of(rcpt, limit, before)
        for send, i in listed:  # listing a message marks it delivered
            if not send.has_signal(i, 0):
                self.stats.signal(0, signal(send, i, 0, now, now, self._emit))
                self._answer_local(now)
        return page_view(rcpt, listed, more)

    def _inbox_signal(self, payload: tuple[str, int, int, int], now: float) -> None:
        rid, key, i, kind = payload
        send = self.sends.get(key)
        if (send is None or send.recipient.id != rid or not 0 <= i < len(send.tpl.steps)
                or send.tpl.steps[i].channel != "inapp" or send.step_status(i) == 0):
            raise NotFound(f"message {format_message_id(key, i + 1)} is not in the inbox of {rid!r}")
        stamp = self._stamp
        if stamp is not None and stamp < self._fired_to:
            self._refuse_closed([(key, i, None, kind)], stamp)
        self.stats.signal(kind, signal(send, i, kind, now, now, self._emit))
        self._answer_local(now)

    def _inbox_peek(self, payload: tuple[str, list[tuple[int, int]]], now: float) -> dict[str, Any]:
        """An inbox's unseen count and the entries named (send key, step index),
        marking nothing: what the inbox stream shows."""
        rid, wanted = payload
        rcpt = self.recipients.get(rid)
        found = []
        for key, i in wanted:
            send = self.sends.get(key)
            if send is not None and send.recipient is rcpt and 0 <= i < len(send.tpl.steps):
                found.append((send, i))
        return page_view(rcpt, found, False)

    def _totals(self, groups: list[str] | None, now: float) -> Any:
        return self.book.totals(groups)

    def _stats(self, _: Any, now: float) -> dict[str, Any]:
        return self.stats.snapshot(active=self.active, timers=len(self.wheel), stored=len(self.sends),
                                   recipients=len(self.recipients))


    # -- recovery ---------------------------------------------------------------
    def _redrive(self, _: Any, now: float) -> int:
        """After recovery: hand over again every message whose answer had not
        come before the crash (at least once: providers see the same
        Idempotency-Key). Only those: a timer that fell due while the server
        was down fires live, and hands over its own message once."""
        n = 0
        for key, i in self.unanswered:
            send = self.sends.get(key)
            if send is not None and send.status == ACTIVE and not send.answered(i):
                self._deliver(send, i)
                self._answer_local(now)
                n += 1
        self.unanswered = []
        return n

    # -- snapshots ----------------------------------------------------------
    def _snapshot_begin(self, payload: tuple[str, int, int, Any, Any], now: float) -> ShardSnapshot:
        if self._snap is not None:
            raise CascadeError("a snapshot of this shard is already being written")
        directory, set_position, file_shard, write, pack = payload
        self._snap = ShardSnapshot(self, directory, set_position, file_shard, write, pack)
        return self._snap

    def _snapshot_slice(self, _: Any, now: float) -> bool:
        if self._snap is None:
            return True
        if self._snap.slice(self):
            self._snap = None
            return True
        return False


class ShardActor(pykka.ThreadingActor):
    """The thread a `ShardState` runs on; a message is a batch of commands."""

    use_daemon_thread = True  # a process that dies must not hang on its shards

    def __init__(self, state: ShardState) -> None:
        super().__init__()
        self.state = state

    def on_receive(self, message: Any) -> Any:
        self.state.process(message)
        return None
