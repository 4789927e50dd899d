"""The engine's front: routes commands to shards by hash slot, batches them,
bounds what is in flight, keeps shards alive, and drives timers.

Everything a caller does goes through here and comes back as a `Reply`
(wait on it from a thread, await it from asyncio). Commands issued on an
event loop are batched per shard and flushed once per loop iteration; a pykka
`tell` costs tens of microseconds, so one per event would cap throughput.
What durability and the manual clock need lives in engine_durability.py.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import threading
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import msgpack
import pykka

from .background import Background
from .campaigns import CampaignBook
from .channels import CHANNELS, SIGNALS
from .clock import Clock, ManualClock
from .counters import merge_totals
from .engine_durability import EngineDurability
from .gc_governor import GcGovernor
from .errors import Conflict, InvalidInput, NotFound, Overloaded
from .fanout import Fanout
from .idempotency import IdempotencyKeys
from .ids import SLOTS, format_send_id, new_send_key, parse_message_id, parse_send_id, slot_of, slot_of_key
from .providers.base import DeliveryOutcome, Provider
from .providers.log import LogProvider
from .recipients import RECIPIENT_ID, RecipientUpdate
from .reply import Gather, Reply, resolve_batch
from ..domain.records import TemplateDeleted
from ..domain.sequence import SignalOutcome
from .shard import Command, ShardActor, ShardState, SubmitJobs
from .state_records import template_record
from .templates import TemplateRegistry, TemplateVersion
from .views import metrics_view

__all__ = ["Engine", "EngineConfig", "Event"]

_log = logging.getLogger("cascade.engine")

# (messageId, sendId, channel, type, at): messageId, or sendId + channel
Event = tuple[str | None, str | None, str | None, str, float | None]
_KIND = {name: k for k, name in enumerate(SIGNALS)}
_ITEM_CODE = {SignalOutcome.UNKNOWN_MESSAGE: "unknown_message", SignalOutcome.UNSUPPORTED: "unsupported_signal"}


@dataclass(frozen=True)
class EngineConfig:
    shards: int = 4
    retain_finished_s: float = 7 * 86400.0
    idempotency_ttl_s: float = 86400.0
    max_pending_per_shard: int = 100_000  # commands queued towards one shard
    tick_interval_s: float = 0.05
    gc_freeze_interval_s: float = 0.1  # see gc_governor.py; 0 turns it off
    campaign_dir: str | None = None  # campaigns' rows files; None: kept in memory and in the journal
    campaign_max_sends_per_s: float = 0.0  # fan-out pace; 0: unlimited


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


class Engine(EngineDurability):
    def __init__(self, clock: Clock, providers: Mapping[str, Provider] | None = None,
                 config: EngineConfig | None = None, submit_jobs: SubmitJobs | None = None,
                 inbox_listener: Callable[[str], None] | None = None, journal: Any = None) -> None:
        self.clock = clock
        self.config = config or EngineConfig()
        log_provider = LogProvider()
        self.providers: dict[str, Provider] = {c: log_provider for c in CHANNELS if c != "inapp"}
        self.providers.update(providers or {})
        self.templates = TemplateRegistry()
        self.idempotency = IdempotencyKeys(self.config.idempotency_ttl_s)
        self.journal = journal
        n = self.config.shards
        self.states = [ShardState(i, clock, self.providers, self.config.retain_finished_s, submit_jobs,
                                  self.delivery_results, inbox_listener, journal, self.templates) for i in range(n)]
        self._refs: list[pykka.ActorRef[Any]] = []
        self._submitted = [0] * n
        self._count_lock = threading.Lock()
        self._outboxes: dict[asyncio.AbstractEventLoop, list[list[Command]]] = {}
        self._advance_lock = threading.Lock()
        self._stop = threading.Event()
        self._stopped = False
        self._ticker: threading.Thread | None = None
        self.gc = GcGovernor(self.config.gc_freeze_interval_s)
        self.background = Background()  # fan-outs and uploads yield to requests through it
        self.campaigns = CampaignBook(self, self.config.campaign_dir)
        self.fanout = Fanout(self, self.campaigns, self.config.campaign_max_sends_per_s)

    # -- lifecycle --------------------------------------------------------------
    def start(self) -> Engine:
        self._refs = [ShardActor.start(state) for state in self.states]
        self.gc.start()
        self.campaigns.remove_orphans()
        self.campaigns.prune_started_rows()
        self.fanout.start()  # resumes campaigns that were running
        if not isinstance(self.clock, ManualClock):
            self._ticker = threading.Thread(target=self._tick_loop, name="cascade-ticker", daemon=True)
            self._ticker.start()
        return self

    def stop(self) -> None:
        self._stopped = True  # refuse new work; no shard is restarted from here on
        self.fanout.stop()
        self._stop.set()
        self.gc.stop()
        if self._ticker is not None:
            self._ticker.join()
        for ref in self._refs:
            try:
                ref.stop(block=True, timeout=30)  # finishes what is queued first
            except pykka.ActorDeadError:
                pass

    def _tick_loop(self) -> None:
        while not self._stop.wait(self.config.tick_interval_s):
            for i in range(len(self.states)):
                self._tell(i, [("tick", None, None)])

    def _restart(self, i: int) -> None:
        _log.error("shard %d had died; restarting it over its state", i)
        self._refs[i] = ShardActor.start(self.states[i])

    @property
    def started(self) -> bool:
        return bool(self._refs) and not self._stopped

    # -- routing and batching -------------------------------------------------
    def shard_of_slot(self, slot: int) -> int:
        return slot * len(self.states) // SLOTS

    def _tell(self, i: int, commands: list[Command]) -> None:
        try:
            self._refs[i].tell(commands)
        except pykka.ActorDeadError:
            if self._stopped:
                return  # late answers after stop: recovery re-drives what they were for
            self._restart(i)
            self._refs[i].tell(commands)

    def _check_open(self) -> None:
        if not self._refs or self._stopped:
            raise Overloaded("the engine is " + ("stopping" if self._stopped else "still recovering"), retry_after_s=1)

    def _check_room(self, i: int) -> None:
        self._check_open()
        if self._submitted[i] - self.states[i].processed >= self.config.max_pending_per_shard:
            raise Overloaded(f"shard {i} has {self.config.max_pending_per_shard} commands queued; retry shortly")

    def _admit(self, i: int, n: int = 1) -> None:
        with self._count_lock:
            self._check_room(i)
            self._submitted[i] += n

    def _submit(self, i: int, command: Command) -> None:
        self._admit(i)
        loop = asyncio._get_running_loop()
        if loop is None:
            self._tell(i, [command])
            return
        outbox = self._outboxes.get(loop)
        if outbox is None:
            outbox = self._outboxes[loop] = [[] for _ in self.states]
            loop.call_soon(self._flush, loop)
        outbox[i].append(command)

    def _flush(self, loop: asyncio.AbstractEventLoop) -> None:
        outbox = self._outboxes.pop(loop, None) or []
        for i, commands in enumerate(outbox):
            if commands:
                self._tell(i, commands)

    def pending(self) -> int:
        """Commands submitted and not yet processed (the shards' mailbox depth)."""
        return sum(s - st.processed for s, st in zip(self._submitted, self.states))

    def _ask(self, i: int, op: str, payload: Any) -> Reply:
        reply = Reply.here()
        self._submit(i, (op, payload, reply))
        return reply

    def _ask_all(self, op: str, payload: Any, combine: Callable[[list[Any]], Any]) -> Reply:
        parent = Reply.here()
        gather = Gather(len(self.states), combine, parent)
        for i in range(len(self.states)):
            self._submit(i, (op, payload, gather.part(i)))
        return parent

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
        self._check_open()
        tv, created = self.templates.put(template_id, body, self.clock.now())
        return self._durable(template_record(tv), (tv, created))

    def get_template(self, template_id: str) -> TemplateVersion:
        return self.templates.get(template_id)

    def list_templates(self) -> list[TemplateVersion]:
        return self.templates.all()

    def delete_template(self, template_id: str) -> Reply:
        """The reply is the deleted TemplateVersion; active sends finish on it."""
        self._check_open()
        tv = self.templates.delete(template_id)
        return self._durable(TemplateDeleted(template_id), tv)

    # -- recipients ---------------------------------------------------------------
    def _recipient_shard(self, rid: str) -> int:
        return self.shard_of_slot(slot_of(rid))

    def put_recipient(self, rid: str, body: Any) -> Reply:
        update = RecipientUpdate(rid, body)
        return self._ask(self._recipient_shard(rid), "put_recipient", (rid, update, True))

    def get_recipient(self, rid: str) -> Reply:
        return self._ask(self._recipient_shard(rid), "get_recipient", rid)

    # -- sends --------------------------------------------------------------------
    def send(self, template: str, recipient: str | dict[str, Any], data: dict[str, Any] | None = None,
             idempotency_key: str | None = None) -> tuple[Reply, bool]:
        """Start a send; (reply with the send view, created). created is False when
        an idempotency key repeats an earlier request: the reply is that send."""
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
        if idempotency_key is not None:
            digest = hashlib.sha256(msgpack.packb(
                IdempotencyKeys.canonical([template, recipient, data or {}]))).digest()
            claim, fresh = self.idempotency.claim(idempotency_key, digest, self.clock.now())
            idem = (idempotency_key, digest, claim.expires)
            if not fresh:
                if claim.send_key is None:
                    raise Conflict(f"a request with idempotencyKey {idempotency_key!r} is still in progress")
                return self.get_send_by_key(claim.send_key), False
        i = self._recipient_shard(rid)
        key = new_send_key(slot_of(rid))
        groups = (f"t:{template}",)
        reply = Reply.here()
        try:
            self._submit(i, ("start", (key, tpl, rid, update, data_bytes, groups, None, True, idem), reply))
        except Exception:
            if claim is not None:
                self.idempotency.release(claim)
            raise
        if claim is not None:
            claim.send_key = key
        return reply, True

    def send_many(self, template: str, recipients: list[str], data: dict[str, Any] | None = None) -> tuple[Reply, list[str]]:
        """Start one send per recipient in one batch per shard, without views
        (bulk loads and benchmarks). Returns a reply that resolves once all
        have started, and the send ids in the order of `recipients`."""
        tpl = self.templates.get(template)
        data_bytes = pack_data(data)
        groups = (f"t:{template}",)
        batches: list[list[Command]] = [[] for _ in self.states]
        keys = []
        for rid in recipients:
            slot = slot_of(rid)
            key = new_send_key(slot)
            keys.append(key)
            batches[self.shard_of_slot(slot)].append(
                ("start", (key, tpl, rid, None, data_bytes, groups, None, False, None), None))
        parent = Reply.here()
        gather = Gather(len(self.states), lambda _: len(recipients), parent)
        for i, batch in enumerate(batches):
            batch.append(("tick", None, gather.part(i)))
            self._admit(i, len(batch))
            self._tell(i, batch)
        return parent, [format_send_id(k) for k in keys]

    def submit_batches(self, batches: list[list[Command]], max_message: int) -> Reply:
        """Bulk path (campaign fan-out): commands without replies, per shard, in
        messages of at most `max_message` so other work interleaves. All or
        nothing (Overloaded); the reply comes once every shard has done its part."""
        busy = [i for i, b in enumerate(batches) if b]
        with self._count_lock:
            for i in busy:
                self._check_room(i)
            for i in busy:
                self._submitted[i] += len(batches[i]) + 1
        parent = Reply.here()
        gather = Gather(len(busy), lambda _: None, parent)
        for n, i in enumerate(busy):
            batch = batches[i]
            for k in range(0, len(batch), max_message):
                message = batch[k:k + max_message]
                if k + max_message >= len(batch):
                    message.append(("tick", None, gather.part(n)))
                self._tell(i, message)
        return parent

    def _route_send_id(self, send_id: str) -> int:
        key = parse_send_id(send_id)
        if key is None:
            raise NotFound(f"send {send_id!r} does not exist")
        return key

    def get_send_by_key(self, key: int) -> Reply:
        return self._ask(self.shard_of_slot(slot_of_key(key)), "get_send", key)

    def get_send(self, send_id: str) -> Reply:
        return self.get_send_by_key(self._route_send_id(send_id))

    def cancel_send(self, send_id: str) -> Reply:
        key = self._route_send_id(send_id)
        return self._ask(self.shard_of_slot(slot_of_key(key)), "cancel", key)

    # -- signals ------------------------------------------------------------------
    def signals(self, events: list[Event]) -> Reply:
        """Apply engagement events; the reply is {accepted, duplicates, errors}."""
        errors: list[dict[str, Any]] = []
        batches: list[list[Any]] = [[] for _ in self.states]
        n_shards = len(self.states)
        for index, (message_id, send_id, channel, kind_name, at) in enumerate(events):
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
            batches[self.shard_of_slot(slot_of_key(key))].append((index, key, step_index, ch, kind, at))
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
                        errs.append({"index": index, "code": _ITEM_CODE[outcome], "message": message})
            errs.sort(key=lambda e: e["index"])
            return {"accepted": total - duplicates - len(errs), "duplicates": duplicates, "errors": errs}

        for i in busy:  # all or nothing: a half-applied batch would never answer
            self._check_room(i)
        parent = Reply.here()
        gather = Gather(len(busy), combine, parent)
        for n, i in enumerate(busy):
            self._submit(i, ("signals", batches[i], gather.part(n)))
        return parent

    def delivery_results(self, results: list[tuple[Any, DeliveryOutcome]]) -> None:
        """Answers of asynchronous providers, routed back to their shards."""
        batches: list[list[Any]] = [[] for _ in self.states]
        for token, outcome in results:
            batches[self.shard_of_slot(slot_of_key(token[0]))].append((token, outcome))
        for i, batch in enumerate(batches):
            if batch:
                with self._count_lock:
                    self._submitted[i] += 1  # accepted work: never refused
                self._tell(i, [("results", batch, None)])

    # -- inbox ----------------------------------------------------------------------
    def inbox(self, rid: str, limit: int = 50, before: str | None = None) -> Reply:
        return self._ask(self._recipient_shard(rid), "inbox", (rid, limit, before))

    def inbox_signal(self, rid: str, message_id: str, kind_name: str) -> Reply:
        parsed = parse_message_id(message_id)
        if parsed is None:
            raise NotFound(f"message {message_id!r} is not in the inbox of {rid!r}")
        return self._ask(self._recipient_shard(rid), "inbox_signal", (rid, parsed[0], parsed[1] - 1, _KIND[kind_name]))

    # -- metrics and statistics -----------------------------------------------------
    def totals(self, groups: list[str] | None = None) -> Reply:
        return self._ask_all("totals", groups, merge_totals)

    def template_metrics(self, template_id: str) -> Reply:
        if not self.templates.known(template_id):
            raise NotFound(f"template {template_id!r} does not exist")
        group = f"t:{template_id}"
        try:
            tpl: TemplateVersion | None = self.templates.get(template_id)
        except NotFound:
            tpl = None
        return self._ask_all("totals", [group], lambda parts: metrics_view(
            template_id, tpl, merge_totals(parts).get(group)))

    def stats(self) -> Reply:
        return self._ask_all("stats", None, list)

    # -- campaigns (see campaigns.py, fanout.py) ------------------------------------
    def ask_shards(self, op: str, payload: Any, combine: Callable[[list[Any]], Any], parent: Any = None) -> Any:
        """Every shard runs `op`; the reply is `combine(answers)`. All or nothing (Overloaded)."""
        with self._count_lock:
            for i in range(len(self.states)):
                self._check_room(i)
        parent = parent if parent is not None else Reply.here()
        gather = Gather(len(self.states), combine, parent)
        for i in range(len(self.states)):
            self._submit(i, (op, payload, gather.part(i)))
        return parent

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
