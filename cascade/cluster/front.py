"""The engine API over a cluster: what the HTTP layer calls on a node.

`ClusterEngine` answers the same calls as `Engine`, for the whole cluster:
a call about one send or recipient goes to the engine of its partition,
here if this node owns it, else forwarded to the owner (node.call, NATS
request/reply, msgpack); an event batch is split by partition, sent as one
call per owner node, and answered as one; listings and a template's metrics
gather every partition's part (one call per node) and combine them as a
single server does. Templates go through the templates bucket
(template_store.py) and are read from this node's registry.

While a partition changes owner (a takeover after a node died, a handover)
a call for it is retried, with a short pause, until `wait_owner_s`; after
that it answers 503 with Retry-After. Prometheus figures (`totals`,
`stats`) are this node's own partitions: Prometheus sums nodes.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

from ..delivery.providers.base import Provider
from ..domain.errors import CascadeError, InvalidInput, NotFound, Overloaded
from ..domain.ids import parse_message_id, parse_send_id
from ..domain.templates import TemplateRegistry, TemplateVersion
from ..engine import Engine
from ..engine.arrivals import InFlight
from ..engine.background import Background
from ..engine.clock import Clock
from ..engine.counters import merge_totals
from ..engine.reply import Gather, Reply
from ..engine.series import SeriesRing
from ..engine.supervisor import Event, backlog, behind_reason, combine_listing
from ..engine.views import metrics_view
from . import wire
from .assign import partition_of_key, partition_of_recipient
from .inbox_relay import InboxRelay
from .node import Node
from .partition import Partition
from .ops import MULTI, OPS, SIGNAL_OPS, raise_item, run_multi
from .template_store import TemplateStore

__all__ = ["ClusterEngine", "NodeAdmission"]

CALL_TIMEOUT_S = 10.0
VIEW_WAIT_S = 1.0


class NodeAdmission:
    """What /metrics and the front door read of admission, summed over this node's partitions."""

    def __init__(self, engines: Callable[[], list[Engine]]) -> None:
        self._engines = engines
        self._shed: dict[str, int] = {"queue": 0, "lag": 0}

    def note_shed(self, reason: str) -> None:
        self._shed[reason] = self._shed.get(reason, 0) + 1

    @property
    def shed_by_reason(self) -> dict[str, int]:
        out = dict(self._shed)
        for engine in self._engines():
            for reason, n in engine.admission.shed_by_reason.items():
                out[reason] = out.get(reason, 0) + n
        return out

    @property
    def refused_signals(self) -> int:
        return sum(engine.admission.refused_signals for engine in self._engines())


class ClusterEngine:
    def __init__(self, node: Node, *, clock: Clock, providers: Mapping[str, Provider], templates: TemplateRegistry,
                 in_flight: InFlight, wait_owner_s: float, shed_lag_s: float) -> None:
        self.node, self.clock, self.providers = node, clock, dict(providers)
        self.templates, self.in_flight = templates, in_flight
        self.template_store: TemplateStore | None = None  # once the node has joined
        self.wait_owner_s, self.shed_lag_s = wait_owner_s, shed_lag_s
        self.delivery_wait: Callable[[], float] = lambda: 0.0  # the server sets its dispatcher's
        self.partitions = node.partitions
        self.admission = NodeAdmission(self.local_engines)
        self.background = Background()  # uploads and every partition's campaign fan-out yield to requests
        self._loop_lag = 0.0
        self._inbox_listener: Callable[[str, str, str], None] | None = None
        self._outbox: dict[str, list[tuple[list[Any], asyncio.Future[Any]]]] = {}  # forwards of this iteration
        self._sending: set[asyncio.Future[None]] = set()
        self.inbox_relay = InboxRelay(node.id, f"{node.prefix}.inbox")  # attached once the node is connected

    # -- this node's engines ------------------------------------------------------------------
    def local_engines(self) -> list[Engine]:
        return [e for p in list(self.node.owned) if (e := self.node.local(p)) is not None]

    def adopt(self, engine: Engine) -> None:
        """A partition this node has just opened: it shares the front door's view of the loop and reports
        its inbox changes (to this node's streams, and to the other nodes')."""
        engine.loop_lag = self._loop_lag
        engine.delivery_wait = self.delivery_wait  # its admission sheds on the node's delivery backlog too
        engine.watch_inbox(self._inbox_changed)

    def _inbox_changed(self, rid: str, message_id: str, kind: str) -> None:
        listener = self._inbox_listener
        if listener is not None:
            listener(rid, message_id, kind)
        self.inbox_relay.changed(rid, message_id, kind)

    @property
    def loop_lag(self) -> float:
        return self._loop_lag

    @loop_lag.setter
    def loop_lag(self, value: float) -> None:
        self._loop_lag = value
        for engine in self.local_engines():
            engine.loop_lag = value

    @property
    def started(self) -> bool:
        return self.node.first_round.is_set()

    @property
    def shards(self) -> int:
        return len(self.node.owned)

    def check_open(self) -> None:
        if not self.node.first_round.is_set():
            raise Overloaded("this node is joining the cluster; retry shortly")

    def behind(self) -> str | None:
        """As a single server judges it: every partition here shares the front door, the in-flight
        requests and the delivery dispatcher it looks at (and a node owning none still sheds)."""
        # A partition owned elsewhere shows no mailbox here: a request's whole round trip counts.
        return behind_reason(self.shed_lag_s, self._loop_lag, self.delivery_wait, self.in_flight.oldest_read,
                             self.clock)

    def backlog_s(self) -> float:
        return backlog(self._loop_lag, self.delivery_wait, self.in_flight.oldest_read, self.clock)

    def pending(self) -> int:
        return sum(e.pending() for e in self.local_engines())

    def watermark_lag(self) -> float:
        return max((e.watermark_lag() for e in self.local_engines()), default=0.0)

    def totals(self, groups: list[str] | None = None) -> Reply:
        """This node's partitions' totals (for /metrics)."""
        engines = self.local_engines()
        parent = Reply.here()
        gather = Gather(len(engines), merge_totals, parent)
        for n, engine in enumerate(engines):
            engine.router.ask_all("totals", groups, merge_totals, gather.part(n))
        return parent

    def stats(self) -> Reply:
        engines = self.local_engines()
        parent = Reply.here()
        gather = Gather(len(engines), lambda parts: [s for part in parts for s in part], parent)
        for n, engine in enumerate(engines):
            engine.router.ask_all("stats", None, list, gather.part(n))
        return parent

    def watch_inbox(self, listener: Callable[[str, str, str], None] | None) -> None:
        """In-app changes of every partition: this node's directly, the others' relayed over NATS."""
        self._inbox_listener = listener
        self.inbox_relay.listen(listener)

    # -- routing --------------------------------------------------------------------------------
    async def _one(self, p: int, op: str, args: tuple[Any, ...]) -> Any:
        """`op` on partition `p`'s engine, wherever it is."""
        deadline = time.monotonic() + self.wait_owner_s
        attempt = 0
        while True:
            partition = self.node.serving(p)
            if partition is not None:
                try:
                    return await while_owned(self.node, partition, lambda engine: OPS[op](engine, args))
                except wire.NotOwner:
                    pass  # lost while answering: a fenced owner's writes never land; ask the next owner
            owner = self.node.owner(p)
            if owner is not None and owner != self.node.id:
                answer = await self._forward(owner, p, op, args)
                if answer is not None:
                    if answer[0] == wire.OK:
                        return answer[1]
                    if answer[0] == wire.ERROR:
                        wire.raise_error(answer)
            attempt += 1
            if time.monotonic() >= deadline:
                raise Overloaded(f"partition {p} has no owner serving it right now (it is being taken over); "
                                 "retry shortly", max(1, round(self.node.lease_s)))
            await asyncio.sleep(min(0.05 * attempt, 0.5))  # the owner is changing: look again shortly
            await self._refresh_owner(p)

    async def many(self, parts: list[tuple[int, str, tuple[Any, ...]]]) -> list[Any]:
        """Several one-partition calls at once: one NATS request per owner node (a "batch" frame), the
        local ones here; what a node did not answer, or no longer owns, goes the way of `_one`."""
        results: list[Any] = [None] * len(parts)
        errors: dict[int, tuple[Any, ...]] = {}
        _, remote = self._by_owner({p for p, _, _ in parts})
        owner_of = {p: node for node, ps in remote.items() for p in ps}
        by_node: dict[str, list[int]] = {}
        again: list[int] = []
        for i, (p, _, _) in enumerate(parts):
            if p in owner_of:
                by_node.setdefault(owner_of[p], []).append(i)
            else:
                again.append(i)  # here, or owner unknown: the way of `_one`

        async def ask(node: str, ix: list[int]) -> None:
            answer = await self._call(node, ["batch", -1, [[[parts[i][0], parts[i][1], list(parts[i][2])]
                                                             for i in ix]]])
            if answer is None or answer[0] != wire.OK:
                again.extend(ix)
                return
            for i, frame in zip(ix, answer[1]):
                if frame[0] == wire.OK:
                    results[i] = frame[1]
                elif frame[0] == wire.ERROR:
                    errors[i] = frame
                else:
                    again.append(i)

        await asyncio.gather(*(ask(node, ix) for node, ix in by_node.items()))

        async def one(i: int) -> None:
            results[i] = await self._one(*parts[i])

        await asyncio.gather(*(one(i) for i in again))
        for frame in errors.values():
            wire.raise_error(frame)
        return results

    def _forward(self, node: str, p: int, op: str, args: tuple[Any, ...]) -> asyncio.Future[Any]:
        """A one-partition call for `node`, sent with the others for it that this loop iteration makes
        (one batch frame, one NATS request, instead of one request each): its answer frame, or None."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        pending = self._outbox.get(node)
        if pending is None:
            pending = self._outbox[node] = []
            if len(self._outbox) == 1:
                loop.call_soon(self._send_forwards)
        pending.append(([p, op, list(args)], future))
        return future

    def _send_forwards(self) -> None:
        outbox, self._outbox = self._outbox, {}
        for node, calls in outbox.items():
            task = asyncio.ensure_future(self._send_batch(node, calls))
            self._sending.add(task)  # held until done: the loop keeps only weak references to tasks
            task.add_done_callback(self._sending.discard)

    async def _send_batch(self, node: str, calls: list[tuple[list[Any], asyncio.Future[Any]]]) -> None:
        if len(calls) == 1:
            (p, op, args), future = calls[0]
            answers = [await self._call(node, [op, p, args])]
        else:
            answer = await self._call(node, ["batch", -1, [[item for item, _ in calls]]])
            answers = list(answer[1]) if answer is not None and answer[0] == wire.OK else [None] * len(calls)
        for (_, future), frame in zip(calls, answers):
            if not future.done():
                future.set_result(frame)

    async def _call(self, node: str, frame: list[Any], timeout: float = CALL_TIMEOUT_S) -> Any:
        """The owner's answer, or None when it did not answer (dead, or moved on: look again)."""
        try:
            return await self._on_nats(self.node.call(node, frame, timeout))
        except Exception:  # timeout, no responders: the node is gone or going
            return None

    async def _refresh_owner(self, p: int) -> None:
        """Read the partition's lease again; when the leases bucket cannot answer (a JetStream election,
        no quorum) the owner stays unknown and the caller's deadline ends in a 503, never a 500."""
        try:
            await self._on_nats(self.node.refresh_owner(p))
        except Exception:  # noqa: BLE001 - any failure to read is "not known yet"
            pass

    async def _on_nats(self, coro: Any) -> Any:
        client = self.node.client
        assert client is not None
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, client.loop))

    async def every(self, op: str, args: tuple[Any, ...], partitions: list[int] | None = None) -> dict[int, Any]:
        """`op` on every partition (or those given): answers by partition, gathered one call per node."""
        wanted = set(range(self.partitions) if partitions is None else partitions)
        answers: dict[int, Any] = {}
        deadline = time.monotonic() + self.wait_owner_s
        attempt = 0
        while wanted:
            answers.update(await self._round(op, args, wanted, CALL_TIMEOUT_S))
            wanted -= set(answers)
            if not wanted:
                break
            attempt += 1
            if time.monotonic() >= deadline:
                raise Overloaded(f"partitions {sorted(wanted)[:8]} have no owner serving them right now; "
                                 "retry shortly", max(1, round(self.node.lease_s)))
            await asyncio.sleep(min(0.05 * attempt, 0.5))
            for p in wanted:
                await self._refresh_owner(p)
        return answers

    def _by_owner(self, partitions: Iterable[int]) -> tuple[list[int], dict[str, list[int]]]:
        """(the partitions served here, the others by the node that owns them); unknown owners in neither."""
        local: list[int] = []
        by_node: dict[str, list[int]] = {}
        for p in partitions:
            if self.node.serving(p) is not None:
                local.append(p)
            elif (owner := self.node.owner(p)) is not None and owner != self.node.id:
                by_node.setdefault(owner, []).append(p)
        return local, by_node

    async def _round(self, op: str, args: tuple[Any, ...], partitions: Iterable[int], timeout: float) -> dict[int, Any]:
        """One ask of a MULTI op: the answers of the owners that gave them within `timeout`, by partition."""
        local, by_node = self._by_owner(sorted(partitions))
        calls = [self._call(node, [op, -1, [ps, list(args)]], timeout) for node, ps in by_node.items()]
        answers, _ = await run_multi(self.node.local, op, tuple(local), args)
        for answer in await asyncio.gather(*calls):
            if answer is not None and answer[0] == wire.OK:
                answers.update(answer[1][0])
            elif answer is not None and answer[0] == wire.ERROR:
                wire.raise_error(answer)
        return answers

    # -- templates --------------------------------------------------------------------------------
    def _store(self) -> TemplateStore:
        if self.template_store is None:
            raise Overloaded("this node is joining the cluster; retry shortly")
        return self.template_store

    async def put_template(self, template_id: str, body: Any) -> tuple[TemplateVersion, bool]:
        store = self._store()
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, store.put, template_id, body, self.clock.now())

    def get_template(self, template_id: str) -> TemplateVersion:
        return self.templates.get(template_id)

    def list_templates(self) -> list[TemplateVersion]:
        return self.templates.all()

    async def delete_template(self, template_id: str) -> TemplateVersion:
        store = self._store()
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, store.delete, template_id)

    async def template_metrics(self, template_id: str) -> dict[str, Any]:
        if not self.templates.known(template_id):
            raise NotFound(f"template {template_id!r} does not exist")
        group = f"t:{template_id}"
        parts = await self.every("totals", ([group],))
        return metrics_view(template_id, self.templates.current(template_id),
                            merge_totals(list(parts.values())).get(group))

    # -- recipients, sends, events, inbox -----------------------------------------------------------
    def _recipient_partition(self, rid: Any) -> int:
        if not isinstance(rid, str):
            raise InvalidInput(f"recipient id {rid!r} is invalid", [("$.recipient", "a recipient id is a string")])
        return partition_of_recipient(rid, self.partitions)

    def _send_partition(self, send_id: str) -> int:
        key = parse_send_id(send_id)
        if key is None:
            raise NotFound(f"send {send_id!r} does not exist")
        return partition_of_key(key, self.partitions)

    async def put_recipient(self, rid: str, body: Any) -> Any:
        return await self._one(self._recipient_partition(rid), "put_recipient", (rid, body))

    async def get_recipient(self, rid: str) -> Any:
        return await self._one(self._recipient_partition(rid), "get_recipient", (rid,))

    async def drop_web_push(self, rid: str, endpoints: tuple[str, ...]) -> Any:
        return await self._one(self._recipient_partition(rid), "drop_web_push", (rid, list(endpoints)))

    async def known_template(self, template: str) -> None:
        """NotFound unless the template exists, read again from the bucket before saying so (a put on
        another node reaches this one's registry a few milliseconds later: read-your-writes across nodes)."""
        if self.templates.current(template) is not None:
            return
        if self.template_store is not None:
            await asyncio.get_running_loop().run_in_executor(None, self.template_store.catch_up, template)
        self.templates.get(template)

    async def start_send(self, template: str, recipient: str | dict[str, Any], data: dict[str, Any] | None = None,
                         idempotency_key: str | None = None) -> tuple[bool, dict[str, Any]]:
        await self.known_template(template)  # 404 here, before any forwarding
        rid = recipient.get("id") if isinstance(recipient, dict) else recipient
        created, view = await self._one(self._recipient_partition(rid), "send",
                                        (template, recipient, data, idempotency_key))
        return bool(created), view

    async def send_batch(self, items: list[tuple[str, str | dict[str, Any], dict[str, Any] | None, str | None]]
                         ) -> list[Any]:
        results: list[Any] = [None] * len(items)
        by_partition: dict[int, list[int]] = {}
        for template in {item[0] for item in items}:
            try:
                await self.known_template(template)
            except NotFound:
                pass  # its items answer 404 below
        for index, (template, recipient, _, _) in enumerate(items):
            rid = recipient.get("id") if isinstance(recipient, dict) else recipient
            try:
                self.templates.get(template)
                p = self._recipient_partition(rid)
            except CascadeError as exc:
                results[index] = exc
                continue
            by_partition.setdefault(p, []).append(index)

        groups = list(by_partition.items())
        answers = await self.many([(p, "send_batch", ([list(items[i]) for i in ix],)) for p, ix in groups])
        for (_, indices), part in zip(groups, answers):
            for i, frame in zip(indices, part):
                item = raise_item(frame)
                results[i] = item if isinstance(item, CascadeError) else (bool(item[0]), item[1])
        return results

    async def get_send(self, send_id: str) -> Any:
        return await self._one(self._send_partition(send_id), "get_send", (send_id,))

    async def cancel_send(self, send_id: str, arrival: float | None = None) -> Any:
        return await self._one(self._send_partition(send_id), "cancel", (send_id, self._arrival(arrival)))

    def _arrival(self, arrival: float | None) -> float:
        return self.clock.now() if arrival is None else arrival

    async def list_sends(self, recipient: str | None = None, template: str | None = None,
                         campaign: str | None = None, status: str | None = None, limit: int = 50,
                         before: str | None = None) -> dict[str, Any]:
        Engine.send_query(recipient, template, campaign, status, limit, before)  # 422 here
        args = (recipient, template, campaign, status, limit, before)
        only = [self._recipient_partition(recipient)] if recipient is not None else None
        parts = await self.every("listing", args, only)
        return combine_listing([piece for shards in parts.values() for piece in shards], limit)

    async def signals(self, events: list[Event], arrival: float | None = None) -> dict[str, Any]:
        """Split by partition, one call per partition (grouped per owner), answered as one."""
        arrival = self._arrival(arrival)
        by_partition: dict[int, list[int]] = {}
        for index, (message_id, send_id, _, _, _) in enumerate(events):
            key = None
            if message_id is not None:
                parsed = parse_message_id(message_id)
                key = parsed[0] if parsed is not None else None
            elif send_id is not None:
                key = parse_send_id(send_id)
            # Events naming no send go to partition 0, whose engine answers them with the same error as ever.
            p = partition_of_key(key, self.partitions) if key is not None else 0
            by_partition.setdefault(p, []).append(index)
        accepted = duplicates = 0
        errors: list[dict[str, Any]] = []
        groups = list(by_partition.items())
        answers = await self.many([(p, "signals", ([list(events[i]) for i in ix], arrival)) for p, ix in groups])
        for (_, indices), answer in zip(groups, answers):
            accepted += answer["accepted"]
            duplicates += answer["duplicates"]
            for error in answer["errors"]:
                errors.append({**error, "index": indices[error["index"]]})
        errors.sort(key=lambda e: e["index"])
        return {"accepted": accepted, "duplicates": duplicates, "errors": errors}

    async def inbox(self, rid: str, limit: int = 50, before: str | None = None, arrival: float | None = None) -> Any:
        return await self._one(self._recipient_partition(rid), "inbox", (rid, limit, before, self._arrival(arrival)))

    async def inbox_peek(self, rid: str, message_ids: list[str]) -> Any:
        return await self._one(self._recipient_partition(rid), "inbox_peek", (rid, list(message_ids)))

    async def inbox_signal(self, rid: str, message_id: str, kind_name: str, arrival: float | None = None) -> Any:
        return await self._one(self._recipient_partition(rid), "inbox_signal",
                               (rid, message_id, kind_name, self._arrival(arrival)))

    # -- the stats series -------------------------------------------------------------------------
    async def view(self, minutes: int, step: int) -> dict[str, Any]:
        """GET /v1/stats/series for the whole cluster: every partition's minutes, summed."""
        ring = SeriesRing()
        for data in (await self.every("series", ())).values():
            if data is not None:
                ring.load(data)
        return ring.points(self.clock.now(), minutes, step)

    # -- the admin view --------------------------------------------------------------------------------
    async def cluster_view(self) -> dict[str, Any]:
        """The admin view; journal positions from each owner, asked at once and waited for at most
        VIEW_WAIT_S (a hung node's partitions show no position; the others' still do)."""
        view = self.node.view()
        positions = await self._round("position", (), range(self.partitions), VIEW_WAIT_S)
        for entry in view["partitions"]:
            if entry["partition"] in positions:
                entry["position"] = positions[entry["partition"]]
                entry.setdefault("replayLag", 0)
            else:
                entry.setdefault("position", None)
                entry.setdefault("replayLag", None)
        return view


async def while_owned(node: Node, partition: Partition, call: Callable[[Engine], Awaitable[Any]]) -> Any:
    """`call` on the partition's engine, or NotOwner when the node loses the partition first (a fenced
    owner's writes are never acknowledged, so its callers must not wait for them) or when the engine
    had already stopped for a handover: either way nothing of the call landed, and the next owner is
    asked instead."""
    task = asyncio.ensure_future(call(partition.engine))
    while True:
        done, _ = await asyncio.wait({task}, timeout=0.25)
        if done:
            try:
                return task.result()
            except Overloaded:  # refused before anything happened: by an engine stopped for a handover?
                if partition.serving:
                    raise
                raise wire.NotOwner(f"partition {partition.number} was handed over") from None
        if not node.answering(partition):
            done, _ = await asyncio.wait({task}, timeout=0.5)  # an answer already on its way to this loop
            if done:
                return task.result()
            task.cancel()
            raise wire.NotOwner(f"node {node.id} lost partition {partition.number} while answering")


def multi_handler(op: str) -> Callable[[Node, tuple[Any, ...]], Any]:
    async def handle(node: Node, args: tuple[Any, ...]) -> Any:
        _, partitions, inner = args
        return await run_multi(node.local, op, tuple(partitions), tuple(inner))
    return handle


def one_handler(op: str, in_flight: InFlight, on_signal: Callable[[float], None],
                known_template: Callable[[str], Awaitable[None]]) -> Callable[[Node, tuple[Any, ...]], Any]:
    carries_signal = op in SIGNAL_OPS
    starts_sends = op in ("send", "send_batch", "campaign_create")

    async def handle(node: Node, args: tuple[Any, ...]) -> Any:
        p, *inner = args
        partition = node.serving(p)
        if partition is None:
            raise wire.NotOwner(f"node {node.id} does not own partition {p}")
        # A signal forwarded here holds this node's windows from the time it reached the other node.
        if starts_sends:  # the sender saw the template: this node may be a few milliseconds behind it
            for template in ({item[0] for item in inner[0]} if op == "send_batch" else {inner[0]}):
                with contextlib.suppress(NotFound):
                    await known_template(template)
        token = None
        if carries_signal:
            on_signal(inner[-1])
            token = in_flight.enter_forwarded(inner[-1])
        try:
            return await while_owned(node, partition, lambda engine: OPS[op](engine, tuple(inner)))
        finally:
            if token is not None:
                in_flight.leave_forwarded(token)
    return handle


def batch_handler(one: dict[str, Any]) -> Callable[[Node, tuple[Any, ...]], Any]:
    """Several one-partition calls in one frame, answered as a list of answer frames in their order."""
    async def handle(node: Node, args: tuple[Any, ...]) -> Any:
        _, items = args

        async def run(p: int, op: str, inner: tuple[Any, ...]) -> list[Any]:
            try:
                return [wire.OK, await one[op](node, (p, *inner))]
            except Exception as exc:  # noqa: BLE001 - each item's error is its own answer
                return wire.error_frame(exc)
        return list(await asyncio.gather(*(run(p, op, inner) for p, op, inner in items)))
    return handle


def handlers(in_flight: InFlight, on_signal: Callable[[float], None],
             known_template: Callable[[str], Awaitable[None]]) -> dict[str, Any]:
    """The ops a node answers for others; `on_signal(arrival)` for each forwarded signal,
    `known_template(id)` before starting sends."""
    table: dict[str, Any] = {op: one_handler(op, in_flight, on_signal, known_template) for op in OPS}
    table["batch"] = batch_handler(dict(table))
    table.update({op: multi_handler(op) for op in MULTI})
    return table
