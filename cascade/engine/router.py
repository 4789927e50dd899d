"""Routing commands to shards: by hash slot, in batches, through admission.

The router owns the shard actors and their mailboxes. Commands issued on an
event loop are batched per shard and told at the end of the loop iteration,
but at most once every `TELL_INTERVAL_S`: each tell wakes the shard's thread,
and with the process on one core a wake-up is a pair of context switches and
a hand-over of the interpreter lock (measured end to end, scheduling was ~15%
of the server's CPU). The journal groups commits 2 ms apart anyway, so
holding a command back for up to a millisecond delays no answer that the
commit would not have delayed. From a thread they are told at once. Every command is admitted first
(mailbox.py), so what is queued is bounded and counted on every path. A
shard whose actor died is restarted over its state.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Any, Callable, Sequence

import pykka

from ..domain.errors import Overloaded
from ..domain.ids import SLOTS
from .commands import Command
from .mailbox import INTERNAL, Admission, Mailbox
from .reply import Gather, Reply
from .shard import ShardActor, ShardState

__all__ = ["Router"]

_log = logging.getLogger("cascade.engine")

TELL_INTERVAL_S = 0.001


class Router:
    def __init__(self, states: Sequence[ShardState], mailboxes: Sequence[Mailbox], admission: Admission) -> None:
        self.states = states
        self.mailboxes = mailboxes
        self.admission = admission
        self._refs: list[pykka.ActorRef[Any]] = []
        self._outboxes: dict[asyncio.AbstractEventLoop, list[list[Command]]] = {}
        self._told_at: dict[asyncio.AbstractEventLoop, float] = {}  # loop.time() of each loop's last flush
        self.stopped = False

    @property
    def shards(self) -> int:
        return len(self.states)

    # -- lifecycle --------------------------------------------------------------
    def start(self) -> None:
        self._refs = [ShardActor.start(state) for state in self.states]

    def stop(self) -> None:
        """Refuse new work, then let each shard finish what is queued."""
        self.stopped = True
        for ref in self._refs:
            try:
                ref.stop(block=True, timeout=30)
            except pykka.ActorDeadError:
                pass

    @property
    def running(self) -> bool:
        return bool(self._refs) and not self.stopped

    def alive(self, i: int) -> bool:
        return self._refs[i].is_alive()

    def kill(self, i: int) -> None:
        """Stop one shard's actor, as a crash would (tests of the restart)."""
        self._refs[i].stop()

    def check_open(self) -> None:
        if not self._refs or self.stopped:
            raise Overloaded("the engine is " + ("stopping" if self.stopped else "still recovering"), retry_after_s=1)

    # -- routing ----------------------------------------------------------------
    def shard_of_slot(self, slot: int) -> int:
        return slot * len(self.states) // SLOTS

    def tell(self, i: int, commands: list[Command]) -> None:
        try:
            self._refs[i].tell(commands)
        except pykka.ActorDeadError:
            if self.stopped:
                return  # late answers after stop: recovery re-drives what they were for
            _log.error("shard %d had died; restarting it over its state", i)
            self._refs[i] = ShardActor.start(self.states[i])
            self._refs[i].tell(commands)

    def post(self, i: int, commands: list[Command]) -> None:
        """Internal commands (ticks, answers, firings): counted, never refused,
        told at once (a caller may block on their replies)."""
        self.admission.admit(((i, len(commands)),), INTERNAL, None)
        self.tell(i, commands)

    def post_soon(self, i: int, commands: list[Command]) -> None:
        """As `post`, but on a loop they join the iteration's batch: each tell
        wakes the shard's thread, and with the process on one core every
        wake-up is a pair of context switches. Not for a caller that blocks
        the loop on their replies."""
        self.admission.admit(((i, len(commands)),), INTERNAL, None)
        loop = asyncio._get_running_loop()
        if loop is None:
            self.tell(i, commands)
        else:
            self._outbox(loop)[i].extend(commands)

    def submit(self, i: int, command: Command, kind: int) -> None:
        """One command from a caller: admitted, then batched per loop iteration."""
        self.check_open()
        self.admission.admit(((i, 1),), kind, command.arrival)
        self._enqueue(i, command)

    def submit_many(self, parts: Sequence[tuple[int, Command]], kind: int, arrival: float | None) -> None:
        """Commands to several shards, admitted whole or not at all."""
        self.check_open()
        self.admission.admit([(i, 1) for i, _ in parts], kind, arrival)
        for i, command in parts:
            self._enqueue(i, command)

    def _enqueue(self, i: int, command: Command) -> None:
        loop = asyncio._get_running_loop()
        if loop is None:
            self.tell(i, [command])
        else:
            self._outbox(loop)[i].append(command)

    def _outbox(self, loop: asyncio.AbstractEventLoop) -> list[list[Command]]:
        """The commands per shard to tell at the end of this loop iteration, or
        `TELL_INTERVAL_S` after the last tell if that is later."""
        outbox = self._outboxes.get(loop)
        if outbox is None:
            outbox = self._outboxes[loop] = [[] for _ in self.states]
            wait = self._told_at.get(loop, -TELL_INTERVAL_S) + TELL_INTERVAL_S - loop.time()
            if wait > 0:
                loop.call_later(wait, self._flush, loop)
            else:
                loop.call_soon(self._flush, loop)
        return outbox

    def _flush(self, loop: asyncio.AbstractEventLoop) -> None:
        self._told_at[loop] = loop.time()
        outbox = self._outboxes.pop(loop, None) or []
        for i, commands in enumerate(outbox):
            if commands:
                self.tell(i, commands)

    def submit_bulk(self, batches: Sequence[list[Command]], kind: int, max_message: int) -> Reply:
        """Bulk path (campaign fan-out): commands without replies, per shard, in
        messages of at most `max_message` so other work interleaves. All or
        nothing (Overloaded); the reply comes once every shard has done its part."""
        self.check_open()
        busy = [i for i, b in enumerate(batches) if b]
        self.admission.admit([(i, len(batches[i]) + 1) for i in busy], kind, None)
        parent = Reply.here()
        gather = Gather(len(busy), lambda _: None, parent)
        for n, i in enumerate(busy):
            batch = batches[i]
            for k in range(0, len(batch), max_message):
                message = batch[k:k + max_message]
                if k + max_message >= len(batch):
                    message.append(Command("tick", None, gather.part(n)))
                self.tell(i, message)
        return parent

    def ask(self, i: int, op: str, payload: Any, kind: int = INTERNAL, arrival: float | None = None) -> Reply:
        reply = Reply.here()
        self.submit(i, Command(op, payload, reply, arrival), kind)
        return reply

    def ask_all(self, op: str, payload: Any, combine: Callable[[list[Any]], Any], parent: Any = None) -> Any:
        """Every shard runs `op`; the reply is `combine(answers)`. All or nothing (Overloaded)."""
        parent = parent if parent is not None else Reply.here()
        gather = Gather(len(self.states), combine, parent)
        self.submit_many([(i, Command(op, payload, gather.part(i))) for i in range(len(self.states))],
                         INTERNAL, None)
        return parent

    def pending(self) -> int:
        """Commands admitted and not yet processed (the shards' mailbox depth)."""
        return sum(m.depth for m in self.mailboxes)

    def waiting_since(self) -> float | None:
        """When the oldest command from a request that no shard has processed yet was posted."""
        return min((at for m in self.mailboxes if (at := m.waiting_since()) is not None), default=None)

    def ticker(self, interval_s: float, stop: threading.Event) -> None:
        """Wake every shard each `interval_s` so due timers fire (real and scaled clocks)."""
        while not stop.wait(interval_s):
            for i in range(len(self.states)):
                self.post(i, [Command("tick", None)])
