"""The engine's front: the API the HTTP layer and campaigns call.

`Engine` composes the parts: a `Router` (shards, mailboxes, admission,
batching), the `FrontState` (templates, idempotency keys, and the records
of extensions such as campaigns) and the `ManualTime` driver. Features
built on the engine attach as extensions (extension.py); it imports none. Every call comes back as
a `Reply` (wait on it from a thread, await it from asyncio). Calls that may
carry an engagement signal (events, cancels, inbox reads and marks) take the
time their request reached the server, which holds windows open until they
are applied (API.md rule 11).
"""

from __future__ import annotations

import hashlib
import logging
import threading
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import msgpack

from ..delivery.providers.base import DeliveryOutcome, Provider
from ..delivery.providers.log import LogProvider
from ..domain.channels import CHANNELS, SIGNALS
from ..domain.errors import CascadeError, Conflict, InvalidInput, NotFound
from ..domain.ids import format_send_id, new_send_key, parse_message_id, parse_send_id, slot_of, slot_of_key
from ..domain.recipients import RECIPIENT_ID, RecipientUpdate
from ..domain.records import TemplateDeleted
from ..domain.send import SEND_STATUS
from ..domain.sequence import SignalOutcome
from ..domain.templates import TemplateRegistry, TemplateVersion
from ..storage.journal import Journal
from .arrivals import InFlight
from .background import Background
from .clock import Clock, ManualClock
from .commands import Command
from .counters import merge_totals
from .extension import Extension
from .front import FrontState
from .gc_governor import GcGovernor
from .idempotency import Claim, IdempotencyKeys
from .mailbox import INTERNAL, SEND, SIGNAL, Admission, Mailbox
from .manual_time import ManualTime
from .outstanding import Outstanding
from .reply import Gather, Reply, resolve_batch
from .router import Router
from .shard import ShardState, SubmitJobs
from .snapshot_records import template_record
from .views import SendQuery, metrics_view

__all__ = ["Engine", "EngineConfig", "Event", "ListingPart", "behind_reason", "combine_listing"]

_log = logging.getLogger("cascade.engine")

# (messageId, sendId, channel, type, at): messageId, or sendId + channel
Event = tuple[str | None, str | None, str | None, str, float | None]
_KIND = {name: k for k, name in enumerate(SIGNALS)}


@dataclass(frozen=True)
class EngineConfig:
    shards: int = 1
    retain_finished_s: float = 7 * 86400.0
    idempotency_ttl_s: float = 86400.0
    max_pending_per_shard: int = 100_000  # commands queued towards one shard (new sends: a quarter of it)
    shed_lag_s: float = 0.05  # new sends are refused while the server is this far behind (0: never)
    tick_interval_s: float = 0.05
    answer_wait_s: float = 120.0  # manual clock: the longest an advance waits at one instant for providers' answers
    gc_freeze_interval_s: float = 0.1  # see gc_governor.py; 0 turns it off


def pack_data(data: dict[str, Any] | None) -> bytes | None:
    """A send's data as msgpack, or a clear error for what msgpack cannot hold."""
    if not data:
        return None
    try:
        packed: bytes = msgpack.packb(data)
    except (OverflowError, ValueError, TypeError) as exc:
        raise InvalidInput(f"data cannot be stored: {exc}",
                           [("$.data", "use JSON values: integers within 64 bits, nesting under 512 levels")]) from None
    return packed


class Engine:
    def __init__(self, clock: Clock, providers: Mapping[str, Provider] | None = None,
                 config: EngineConfig | None = None, submit_jobs: SubmitJobs | None = None,
                 journal: Journal | None = None, templates: TemplateRegistry | None = None,
                 in_flight: InFlight | None = None) -> None:
        """`templates` and `in_flight` are given when several engines share one
        front door (a cluster node's partitions); each engine has its own otherwise."""
        self.clock = clock
        self.config = config or EngineConfig()
        log_provider = LogProvider()
        self.providers: dict[str, Provider] = {c: log_provider for c in CHANNELS if c != "inapp"}
        self.providers.update(providers or {})
        self.templates = templates if templates is not None else TemplateRegistry()
        self.idempotency = IdempotencyKeys(self.config.idempotency_ttl_s)
        self.journal = journal
        self.in_flight = in_flight if in_flight is not None else InFlight()  # signal-carrying requests not yet answered (the HTTP front fills it)
        self.loop_lag = 0.0  # how late the event loop runs its callbacks (the HTTP front measures it)
        self.delivery_wait: Callable[[], float] = lambda: 0.0  # oldest message waiting for a provider slot (s)
        self.outstanding = Outstanding()
        n = self.config.shards
        mailboxes = [Mailbox(clock.now) for _ in range(n)]
        self.states = [ShardState(i, clock, self.providers, self.config.retain_finished_s, submit_jobs,
                                  self.delivery_results, journal, self.templates, mailboxes[i],
                                  self.in_flight.oldest, self.outstanding) for i in range(n)]
        self.admission = Admission(mailboxes, self.config.max_pending_per_shard, self.behind)
        self.router = Router(self.states, mailboxes, self.admission)
        self._stop = threading.Event()
        self._ticker: threading.Thread | None = None
        self.gc = GcGovernor(self.config.gc_freeze_interval_s)
        self.background = Background()  # fan-outs and uploads yield to requests through it
        self.extensions: list[Extension] = []
        self.front = FrontState(clock, self.templates, self.idempotency, self.extensions)
        self.manual_time = ManualTime(clock, self.router, self.extensions, self.outstanding, journal,
                                      self.config.answer_wait_s)

    # -- lifecycle --------------------------------------------------------------
    def attach(self, extension: Extension) -> None:
        """Join a feature to the engine, before recovery and `start`."""
        if self.router.running:
            raise RuntimeError("attach extensions before the engine starts")
        self.extensions.append(extension)

    def start(self) -> Engine:
        self.router.start()
        self.gc.start()
        for extension in self.extensions:
            extension.start()
        if not isinstance(self.clock, ManualClock):
            self._ticker = threading.Thread(target=self.router.ticker, args=(self.config.tick_interval_s, self._stop),
                                            name="cascade-ticker", daemon=True)
            self._ticker.start()
        return self

    def stop(self) -> None:
        self.router.stopped = True  # refuse new work; no shard is restarted from here on
        for extension in self.extensions:
            extension.stop()
        self._stop.set()
        self.gc.stop()
        if self._ticker is not None:
            self._ticker.join()
        self.router.stop()

    @property
    def started(self) -> bool:
        return self.router.running

    @property
    def shards(self) -> int:
        return self.router.shards

    @property
    def tick_interval_s(self) -> float:
        return self.config.tick_interval_s

    def check_open(self) -> None:
        self.router.check_open()

    def behind(self) -> str | None:
        """Why new sends must wait (the server is behind on what it was sent), or None."""
        return behind_reason(self.config.shed_lag_s, self.loop_lag, self.delivery_wait, self.router.waiting_since,
                             self.clock)

    def backlog_s(self) -> float:
        """How long the oldest work the server has taken on has waited, in real seconds (`backlog`)."""
        return backlog(self.loop_lag, self.delivery_wait, self.router.waiting_since, self.clock)

    def watermark_lag(self) -> float:
        """How far the shards' windows trail the clock (the largest, in clock seconds)."""
        return max((st.stats.watermark_lag for st in self.states), default=0.0)

    def pending(self) -> int:
        """Commands admitted and not yet processed (the shards' mailbox depth)."""
        return self.router.pending()

    def shard_of_key(self, key: int) -> int:
        return self.router.shard_of_slot(slot_of_key(key))

    def shard_of_recipient(self, rid: str) -> int:
        return self.router.shard_of_slot(slot_of(rid))

    def _ask(self, i: int, op: str, payload: Any, kind: int = INTERNAL, arrival: float | None = None) -> Reply:
        reply = self.router.ask(i, op, payload, kind, arrival)
        if kind == SIGNAL:
            self.in_flight.handed_over()
        return reply

    # -- durability and time: what the snapshot coordinator, recovery and the admin API call ----
    def front_records(self) -> list[Any]:
        return self.front.records()

    def apply_front(self, record: Any) -> None:
        self.front.apply(record)

    def snapshot_shards(self, directory: str, set_position: int, write: Callable[..., Any],
                        pack: Callable[[Any], Any]) -> list[Any]:
        """Write every shard's snapshot in slices (blocking; call from a thread).
        One shard slices at a time: shards share one interpreter lock, so
        slicing them all at once would stall them all at once."""
        n = self.router.shards
        snaps = [self._ask(i, "snapshot_begin", (directory, set_position, i + 1, write, pack)).wait(None)
                 for i in range(n)]
        pending = list(range(n))
        while pending:
            pending = [i for i in pending if not self._ask(i, "snapshot_slice", None).wait(None)]
        return snaps

    def redrive(self) -> Reply:
        """After recovery: hand over again what no provider answered."""
        reply: Reply = self.router.ask_all("redrive", None, sum)
        return reply

    def advance(self, seconds: float) -> float:
        """Move a manual clock (see manual_time.py). Blocking: call it from a thread."""
        return self.manual_time.advance(seconds)

    # -- templates (front-door state, shared read-only by shards) ------------------
    def _durable(self, record: Any, value: Any) -> Reply:
        """A front-door write: answered once its journal record is durable."""
        if self.journal is None:
            return Reply.resolved(value)
        reply = Reply.here()
        reply.set(value)
        self.journal.append([record], lambda: resolve_batch([reply]))
        return reply

    def put_template(self, template_id: str, body: Any) -> Reply:
        """Validate (raising TemplateInvalid at once) and store a new version;
        the reply is (TemplateVersion, created) once the write is durable."""
        self.check_open()
        tv, created = self.templates.put(template_id, body, self.clock.now())
        return self._durable(template_record(tv), (tv, created))

    def get_template(self, template_id: str) -> TemplateVersion:
        return self.templates.get(template_id)

    def list_templates(self) -> list[TemplateVersion]:
        return self.templates.all()

    def delete_template(self, template_id: str) -> Reply:
        """The reply is the deleted TemplateVersion; active sends finish on it."""
        self.check_open()
        tv = self.templates.delete(template_id)
        return self._durable(TemplateDeleted(template_id), tv)

    # -- recipients ---------------------------------------------------------------
    def put_recipient(self, rid: str, body: Any) -> Reply:
        update = RecipientUpdate(rid, body)
        return self._ask(self.shard_of_recipient(rid), "put_recipient", (rid, update, True), SEND)

    def get_recipient(self, rid: str) -> Reply:
        return self._ask(self.shard_of_recipient(rid), "get_recipient", rid)

    def drop_web_push(self, rid: str, endpoints: tuple[str, ...]) -> Reply:
        """Drop Web Push subscriptions a push service called gone (404/410) from
        the recipient, journaled; the reply is how many it still listed.
        Work already accepted (a provider's answer): never shed."""
        return self._ask(self.shard_of_recipient(rid), "drop_web_push", (rid, tuple(endpoints)))

    # -- sends --------------------------------------------------------------------
    def send(self, template: str, recipient: str | dict[str, Any], data: dict[str, Any] | None = None,
             idempotency_key: str | None = None) -> tuple[Reply, bool]:
        """Start a send; (reply with the send view, created). created is False when
        an idempotency key repeats an earlier request: the reply is that send."""
        i, command, claim = self._prepare_send(template, recipient, data, idempotency_key, Reply.here())
        try:
            self.router.submit(i, command, SEND)
        except Exception:
            if claim is not None:
                self.idempotency.release(claim)
            raise
        return command.reply, command.op == "start"

    async def start_send(self, template: str, recipient: str | dict[str, Any], data: dict[str, Any] | None = None,
                         idempotency_key: str | None = None) -> tuple[bool, dict[str, Any]]:
        """`send`, awaited: (created, the send view)."""
        reply, created = self.send(template, recipient, data, idempotency_key)
        return created, await reply

    def send_batch(self, items: list[tuple[str, str | dict[str, Any], dict[str, Any] | None, str | None]]) -> Reply:
        """Start many sends at once: (template, recipient, data, idempotencyKey)
        each. The reply is a list in item order of (created, send view) or the
        item's error (a CascadeError). Admitted whole or refused whole
        (Overloaded); each shard journals its share in one batch."""
        prepared: list[tuple[int, int, Command, Any]] = []  # (item, shard, command, claim)
        results: list[Any] = [None] * len(items)
        for index, (template, recipient, data, key) in enumerate(items):
            try:
                i, command, claim = self._prepare_send(template, recipient, data, key, None)
            except CascadeError as exc:
                results[index] = exc
                continue
            prepared.append((index, i, command, claim))

        def combine(answers: list[Any]) -> list[Any]:
            for (index, _, command, _), answer in zip(prepared, answers):
                results[index] = answer if isinstance(answer, BaseException) else (command.op == "start", answer)
            return results

        parent = Reply.here()
        gather = Gather(len(prepared), combine, parent, keep_errors=True)
        commands = [(i, command._replace(reply=gather.part(n))) for n, (_, i, command, _) in enumerate(prepared)]
        try:
            self.router.submit_many(commands, SEND, None)
        except Exception:
            for _, _, _, claim in prepared:
                if claim is not None:
                    self.idempotency.release(claim)
            raise
        return parent

    def _prepare_send(self, template: str, recipient: str | dict[str, Any], data: dict[str, Any] | None,
                      idempotency_key: str | None, reply: Any) -> tuple[int, Command, Claim | None]:
        """The shard and the command that answer one send request: a start,
        or a read of the send an earlier request with its idempotency key made."""
        tpl = self.templates.get(template)
        if isinstance(recipient, dict):
            rid = recipient.get("id")
            update: RecipientUpdate | None = RecipientUpdate(rid, recipient, "$.recipient")  # type: ignore[arg-type]
        else:
            rid, update = recipient, None
            if not isinstance(rid, str) or not RECIPIENT_ID.fullmatch(rid):
                raise InvalidInput(f"recipient id {rid!r} is invalid",
                                   [("$.recipient", "a recipient id is 1-128 characters without spaces or '/'")])
        assert isinstance(rid, str)
        data_bytes = pack_data(data)
        claim = idem = None
        key = new_send_key(slot_of(rid))
        if idempotency_key is not None:
            digest = hashlib.sha256(msgpack.packb(
                IdempotencyKeys.canonical([template, recipient, data or {}]))).digest()
            claim, fresh = self.idempotency.claim(idempotency_key, digest, self.clock.now())
            if not fresh:
                if claim.send_key is None:
                    raise Conflict(f"a request with idempotencyKey {idempotency_key!r} is still in progress")
                return self.shard_of_key(claim.send_key), Command("get_send", claim.send_key, reply), None
            idem = (idempotency_key, digest, claim.expires)
            claim.send_key = key  # a repeat from now on reads this send (it queues behind its start)
        command = Command("start", (key, tpl, rid, update, data_bytes, (f"t:{template}",), None, True, idem), reply)
        return self.shard_of_recipient(rid), command, claim

    def send_many(self, template: str, recipients: list[str], data: dict[str, Any] | None = None) -> tuple[Reply, list[str]]:
        """Start one send per recipient in one batch per shard, without views
        (bulk loads and benchmarks). Returns a reply that resolves once all
        have started, and the send ids in the order of `recipients`."""
        tpl = self.templates.get(template)
        data_bytes = pack_data(data)
        groups = (f"t:{template}",)
        batches: list[list[Command]] = [[] for _ in range(self.router.shards)]
        keys = []
        for rid in recipients:
            slot = slot_of(rid)
            key = new_send_key(slot)
            keys.append(key)
            batches[self.router.shard_of_slot(slot)].append(
                Command("start", (key, tpl, rid, None, data_bytes, groups, None, False, None)))
        reply = self.router.submit_bulk(batches, SEND, max_message=1 << 30)
        return reply, [format_send_id(k) for k in keys]

    def submit_batches(self, batches: list[list[Command]], max_message: int) -> Reply:
        """Bulk path (campaign fan-out): see Router.submit_bulk."""
        return self.router.submit_bulk(batches, SEND, max_message)

    def _route_send_id(self, send_id: str) -> int:
        key = parse_send_id(send_id)
        if key is None:
            raise NotFound(f"send {send_id!r} does not exist")
        return key

    def get_send_by_key(self, key: int) -> Reply:
        return self._ask(self.shard_of_key(key), "get_send", key)

    def get_send(self, send_id: str) -> Reply:
        return self.get_send_by_key(self._route_send_id(send_id))

    def list_sends(self, recipient: str | None = None, template: str | None = None, campaign: str | None = None,
                   status: str | None = None, limit: int = 50, before: str | None = None) -> Reply:
        """Sends matching every filter given, newest first, retained finished
        ones included: the reply is {"sends": [views], "next": cursor | None}."""
        if status is not None and status not in SEND_STATUS:
            raise InvalidInput(f"status {status!r} is not one of {', '.join(SEND_STATUS)}",
                               [("status", f"one of {', '.join(SEND_STATUS)}")])
        query = self.send_query(recipient, template, campaign, status, limit, before)

        def combine(parts: list[ListingPart]) -> dict[str, Any]:
            return combine_listing(parts, limit)

        if recipient is not None:  # its sends live on its shard alone
            reply = Reply.here()
            self.router.submit(self.shard_of_recipient(recipient),
                               Command("list_sends", query, Gather(1, combine, reply).part(0)), INTERNAL)
            return reply
        all_parts: Reply = self.router.ask_all("list_sends", query, combine)
        return all_parts

    @staticmethod
    def send_query(recipient: str | None, template: str | None, campaign: str | None, status: str | None,
                   limit: int, before: str | None) -> SendQuery:
        if status is not None and status not in SEND_STATUS:
            raise InvalidInput(f"status {status!r} is not one of {', '.join(SEND_STATUS)}",
                               [("status", f"one of {', '.join(SEND_STATUS)}")])
        code = None if status is None else SEND_STATUS.index(status)
        return SendQuery(recipient, template, campaign, code, limit, _parse_cursor(before), LIST_SCAN)

    def listing_parts(self, query: SendQuery) -> Reply:
        """Every shard's part of a listing, uncombined (a cluster combines the parts of all partitions)."""
        reply: Reply = self.router.ask_all("list_sends", query, list)
        return reply

    def cancel_send(self, send_id: str, arrival: float | None = None) -> Reply:
        key = self._route_send_id(send_id)
        return self._ask(self.shard_of_key(key), "cancel", key, SIGNAL, self._arrival(arrival))

    def _arrival(self, arrival: float | None) -> float:
        return self.clock.now() if arrival is None else arrival

    # -- signals ------------------------------------------------------------------
    def signals(self, events: list[Event], arrival: float | None = None) -> Reply:
        """Apply engagement events; the reply is {accepted, duplicates, errors}.
        `arrival`: when the request reached the server (default: now)."""
        errors: list[dict[str, Any]] = []
        n_shards = self.router.shards
        arrival = self.clock.now() if arrival is None else arrival
        batches: list[list[Any]] = [[] for _ in range(n_shards)]
        for index, (message_id, send_id, channel, kind_name, at) in enumerate(events):
            if at is None:
                at = arrival  # an event without `at` happened when it reached the server
            kind = _KIND.get(kind_name)
            if kind is None:
                errors.append({"index": index, "code": "invalid",
                               "message": f"type {kind_name!r} is not one of {', '.join(SIGNALS)}"})
                continue
            if message_id is not None:
                # Fast path for the canonical "snd_<15 lower-case hex>.<digit>" shape.
                if len(message_id) == 21 and message_id[19] == "." and message_id.startswith("snd_") \
                        and "1" <= message_id[20] <= "9" and not message_id[4:19].strip("0123456789abcdef"):
                    key = int(message_id[4:19], 16)
                    batches[(key >> 46) * n_shards >> 14].append((index, key, ord(message_id[20]) - 49, None, kind, at))
                    continue
                parsed = parse_message_id(message_id)
                if parsed is None:
                    errors.append({"index": index, "code": "unknown_message",
                                   "message": f"messageId {message_id!r} is not a message id (<sendId>.<step>)"})
                    continue
                key, step_index, ch = parsed[0], parsed[1] - 1, None
            else:
                key2 = parse_send_id(send_id or "")
                if key2 is None or channel not in CHANNELS:
                    errors.append({"index": index, "code": "unknown_message",
                                   "message": f"sendId {send_id!r} with channel {channel!r} names no message"})
                    continue
                key, step_index, ch = key2, None, channel
            batches[self.router.shard_of_slot(slot_of_key(key))].append((index, key, step_index, ch, kind, at))
        busy = [i for i, b in enumerate(batches) if b]
        total = len(events)

        def combine(parts: list[list[tuple[int, int, str]]]) -> dict[str, Any]:
            duplicates = 0
            errs = list(errors)
            for part in parts:
                for index, outcome, message in part:
                    if outcome == SignalOutcome.DUPLICATE:
                        duplicates += 1
                    else:
                        errs.append({"index": index, "code": SignalOutcome.NAMES[outcome], "message": message})
            errs.sort(key=lambda e: e["index"])
            return {"accepted": total - duplicates - len(errs), "duplicates": duplicates, "errors": errs}

        parent = Reply.here()
        gather = Gather(len(busy), combine, parent)
        # All or nothing: a half-applied batch would never answer.
        self.router.submit_many([(i, Command("signals", batches[i], gather.part(n), arrival))
                                 for n, i in enumerate(busy)], SIGNAL, arrival)
        self.in_flight.handed_over()
        return parent

    def delivery_results(self, results: list[tuple[Any, DeliveryOutcome]]) -> None:
        """Answers of asynchronous providers, routed back to their shards."""
        batches: list[list[Any]] = [[] for _ in range(self.router.shards)]
        for token, outcome in results:
            batches[self.shard_of_key(token[0])].append((token, outcome))
        for i, batch in enumerate(batches):
            if batch:
                self.router.post_soon(i, [Command("results", batch)])  # accepted work: never refused

    # -- inbox ----------------------------------------------------------------------
    def inbox(self, rid: str, limit: int = 50, before: str | None = None, arrival: float | None = None) -> Reply:
        """A page of the inbox; listing marks its messages delivered (a signal)."""
        return self._ask(self.shard_of_recipient(rid), "inbox", (rid, limit, before), SIGNAL, self._arrival(arrival))

    def inbox_peek(self, rid: str, message_ids: list[str]) -> Reply:
        """{"messages": [the entries named that are in the inbox], "next": None,
        "unseen": n}, marking nothing (the inbox stream's read)."""
        wanted = [(p[0], p[1] - 1) for p in map(parse_message_id, message_ids) if p is not None]
        return self._ask(self.shard_of_recipient(rid), "inbox_peek", (rid, wanted))

    def watch_inbox(self, listener: Callable[[str, str, str], None] | None) -> None:
        """Report every live change to an inbox as (recipient id, message id,
        kind): "message" (a new in-app message), "viewed" or "clicked". It is
        called on the shard's thread inside its batch, so it must be quick and
        must not block; None stops the reports. One listener at a time."""
        for state in self.states:
            state.inbox_changes = listener

    def inbox_signal(self, rid: str, message_id: str, kind_name: str, arrival: float | None = None) -> Reply:
        parsed = parse_message_id(message_id)
        if parsed is None:
            raise NotFound(f"message {message_id!r} is not in the inbox of {rid!r}")
        return self._ask(self.shard_of_recipient(rid), "inbox_signal", (rid, parsed[0], parsed[1] - 1, _KIND[kind_name]),
                         SIGNAL, self._arrival(arrival))

    # -- metrics and statistics -----------------------------------------------------
    def totals(self, groups: list[str] | None = None) -> Reply:
        reply: Reply = self.router.ask_all("totals", groups, merge_totals)
        return reply

    def template_metrics(self, template_id: str) -> Reply:
        if not self.templates.known(template_id):
            raise NotFound(f"template {template_id!r} does not exist")
        group = f"t:{template_id}"
        try:
            tpl: TemplateVersion | None = self.templates.get(template_id)
        except NotFound:
            tpl = None
        reply: Reply = self.router.ask_all("totals", [group], lambda parts: metrics_view(
            template_id, tpl, merge_totals(parts).get(group)))
        return reply

    def stats(self) -> Reply:
        reply: Reply = self.router.ask_all("stats", None, list)
        return reply

    # -- what extensions (campaigns) call -------------------------------------------------
    def ask_shards(self, op: str, payload: Any, combine: Callable[[list[Any]], Any], parent: Any = None) -> Any:
        """Every shard runs `op`; the reply is `combine(answers)`. All or nothing (Overloaded)."""
        return self.router.ask_all(op, payload, combine, parent)

    def campaign_rows_started(self, campaign_id: str) -> Reply:
        """The union of the shards' started-rows bitmaps of a campaign (bytes)."""
        def union(parts: list[bytes]) -> bytes:
            n = max(map(len, parts), default=0)
            acc = 0
            for p in parts:
                acc |= int.from_bytes(p, "little")
            return acc.to_bytes(n, "little")
        reply: Reply = self.ask_shards("campaign_rows", campaign_id, union)
        return reply


LIST_SCAN = 200_000  # sends a listing looks at per shard and page, whatever its filters


ListingPart = tuple[list[tuple[float, int, dict[str, Any]]], "tuple[float, int] | None"]


def combine_listing(parts: Sequence[ListingPart], limit: int) -> dict[str, Any]:
    """One page of sends from every shard's part, newest first."""
    # Every shard has looked at all sends newer than the newest point
    # where one of them stopped: only those can be answered now.
    stops = [tuple(stop) for _, stop in parts if stop is not None]
    floor = max(stops) if stops else None
    found = sorted((item for items, _ in parts for item in items
                    if floor is None or (item[0], item[1]) >= floor), key=lambda it: (it[0], it[1]), reverse=True)
    page = found[:limit]
    if len(found) > limit:
        floor = (page[-1][0], page[-1][1])
    return {"sends": [view for _, _, view in page], "next": None if floor is None else _cursor(floor)}  # type: ignore[arg-type]


def _cursor(at: tuple[float, int]) -> str:
    """A listing's `next`: the (created, key) point the next page starts below."""
    return f"{at[0]!r}~{at[1]}"


def _parse_cursor(text: str | None) -> tuple[float, int] | None:
    """The point a listing's `next` cursor names, or a 422 naming `before`."""
    if text is None:
        return None
    created, _, key = text.partition("~")
    try:
        at = (float(created), int(key))
    except ValueError:
        raise InvalidInput(f"cursor {text!r} is not a `next` of this listing",
                           [("before", "use the `next` value of the previous page")]) from None
    if not (at[0] == at[0] and abs(at[0]) < 1e12):  # NaN or absurd: not one of ours
        raise InvalidInput(f"cursor {text!r} is not a `next` of this listing",
                           [("before", "use the `next` value of the previous page")])
    return at


def behind_reason(limit: float, loop_lag: float, delivery_wait: Callable[[], float],
                  unapplied: Callable[[], float | None], clock: Clock) -> str | None:
    """Why new sends must wait, from what a front door sees (`Engine.behind`; a cluster node's, whose
    partitions share these), or None. `unapplied`: since when the oldest command read from a request
    has waited to be applied (when it was read or posted, not its arrival stamp, which the front
    sets early on purpose). `limit` 0: never."""
    if limit <= 0:
        return None
    if loop_lag > limit:
        return f"the server is {loop_lag * 1000:.0f} ms behind; retry shortly"
    waited = delivery_wait()
    if waited > limit:  # a window opens only once its channel has the message: a backlog delays them all
        return f"deliveries wait {waited * 1000:.0f} ms for their providers; retry shortly"
    if _unapplied_s(unapplied, clock) > limit:
        return "signals are waiting to be applied; retry shortly"
    return None


def backlog(loop_lag: float, delivery_wait: Callable[[], float], unapplied: Callable[[], float | None],
            clock: Clock) -> float:
    """The longest any of the three queues `behind_reason` judges has kept work waiting, real seconds:
    what the send pacer holds under its target, whichever of the loop, the shards or the providers
    is the one falling behind."""
    return max(loop_lag, delivery_wait(), _unapplied_s(unapplied, clock))


def _unapplied_s(unapplied: Callable[[], float | None], clock: Clock) -> float:
    # A loop that has not read is the loop lag's to judge; a signal applied and waiting for its
    # journal commit is not: refusing sends does not make a slow disk faster.
    oldest = unapplied()
    return 0.0 if oldest is None else max(0.0, (clock.now() - oldest) / _clock_rate(clock))


def _clock_rate(clock: Clock) -> float:
    """Clock seconds per real second (a scaled clock's lag limit is in real time)."""
    return float(getattr(clock, "rate", 1.0))
