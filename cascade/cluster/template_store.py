"""Templates in a replicated JetStream key-value bucket, mirrored into each node's registry.

Layout: bucket `cascade-templates` (history 1), one key a *slot*:
`t.<id>.<n>`, n = 1, 2, ... per template. A slot holds one JSON value (so
`nats kv get` shows it): a version, `{"format": 1, "op": "put", "template",
"version": n, "body", "created", "updated", "writer"}` (the fields of
`records.TemplatePut`), or a deletion marker, `{"format": 1, "op":
"delete", "template", "version": n, "writer"}`. A template id passes into
the key as it is when it keeps to `[A-Za-z0-9_-]` (`templates.TEMPLATE_ID`
allows less than that); any other character is written `=XX` per UTF-8
byte, so an id never holds a `.` and `t.<id>.>` lists one template's keys.

Invariants: a slot is written once, with create-only `kv.create` (fails if
the key exists), and never changed or deleted; so every version stays
readable forever and two nodes racing for slot n get one winner, the loser
re-reads the template's keys and tries the next slot. A writer picks n one
past the highest slot it knows, so slot n is created only after n - 1
exists: slots land in the stream in increasing order per template, and the
registry sees each template's versions applied in increasing order. A
delete takes a slot too, so the next put continues the numbering past it.

Every node loads the bucket on `open` through a watcher (on the NATS loop)
and keeps following with that same watcher, so nothing written between the
load and the follow is missed. A change this node applied already (its own
put, or a slot read back after a conflict) is known by its slot number and
skipped. `reassert` puts the registry back to what the bucket says after a
partition recovery installed older template records from a snapshot into
the shared registry.

Unlike a single node's registry, a put after a delete skips the deletion's
slot (versions 1, 2, delete, then 4). A put or delete that loses `TRIES`
races in a row raises `Conflict`. The `writer` of a value is a random id of
one put or delete: when a create's acknowledgement is lost, reading the
slot back tells whether it was ours. A call that times out (`TimeoutError`)
may still have written its slot; the watcher then applies it like any other.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
import uuid
from typing import Any

import nats.errors
from nats.js.errors import BucketNotFoundError, KeyWrongLastSequenceError, NoStreamResponseError
from nats.js.kv import KV_DEL, KV_PURGE, KeyValue

from ..domain.errors import Conflict, NotFound, Overloaded, TemplateInvalid
from ..domain.templates import TemplateRegistry, TemplateVersion, validate_template
from .client import NatsThread
from .transient import retried

__all__ = ["TemplateStore", "slot_key"]

log = logging.getLogger("cascade.cluster.templates")
FORMAT = 1
TRIES = 32  # slots tried by one put or delete: each failure means another node's write won
_PLAIN = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-")


def _escape(template_id: str) -> str:
    return "".join(c if c in _PLAIN else "".join(f"={b:02x}" for b in c.encode()) for c in template_id)


def _unescape(text: str) -> str:
    out, i = bytearray(), 0
    while i < len(text):
        if text[i] == "=":
            out.append(int(text[i + 1:i + 3], 16))
            i += 3
        else:
            out += text[i].encode()
            i += 1
    return out.decode()


# nats-py leaves KeyWatcher's methods unannotated: typed here, once.
async def _next(watcher: KeyValue.KeyWatcher, timeout: float) -> KeyValue.Entry | None:
    entry: KeyValue.Entry | None = await watcher.updates(timeout)  # type: ignore[no-untyped-call]
    return entry


async def _halt(watcher: KeyValue.KeyWatcher) -> None:
    await watcher.stop()  # type: ignore[no-untyped-call]


def slot_key(template_id: str, n: int) -> str:
    """The bucket key of slot `n` of `template_id`."""
    return f"t.{_escape(template_id)}.{n}"


def _slot(key: str) -> tuple[str, int]:
    """(template, slot) of a key; ValueError if it is not `t.<id>.<n>`."""
    prefix, _, rest = key.partition(".")
    escaped, _, n = rest.rpartition(".")
    if prefix != "t" or not escaped or not n.isdigit():
        raise ValueError(f"key {key!r} is not a template slot t.<id>.<n>")
    return _unescape(escaped), int(n)


def _value(key: str, template: str, n: int, value: bytes | None) -> dict[str, Any]:
    """The slot's value; ValueError if this cascade cannot read it."""
    body = json.loads(value or b"null")
    if not isinstance(body, dict) or body.get("format") != FORMAT or body.get("op") not in ("put", "delete"):
        raise ValueError(f"key {key!r}: not a format {FORMAT} template slot")
    if (body.get("template"), body.get("version")) != (template, n):
        raise ValueError(f"key {key!r} holds template {body.get('template')!r} slot {body.get('version')!r}")
    return body


class TemplateStore:
    """A node's view of the cluster's templates: writes go to the bucket, every node's registry follows it.

    `put`, `delete` and `open` block (call them off the NATS loop); each waits
    at most `timeout_s`. `reassert` does no I/O and may be called anywhere.
    """

    def __init__(self, client: NatsThread, registry: TemplateRegistry, *, bucket: str = "cascade-templates",
                 replicas: int = 1, timeout_s: float = 10.0) -> None:
        self.client, self.registry, self.bucket = client, registry, bucket
        self.replicas, self.timeout_s = replicas, timeout_s
        self._kv: KeyValue | None = None
        self._watcher: KeyValue.KeyWatcher | None = None
        self._follower: asyncio.Task[None] | None = None
        # Guards `_known` and this store's writes to the registry (the loop applies, reassert may run elsewhere).
        self._lock = threading.Lock()
        self._known: dict[str, tuple[int, TemplateVersion | None]] = {}  # id -> (highest slot, current or None)

    @property
    def kv(self) -> KeyValue:
        if self._kv is None:
            raise RuntimeError("TemplateStore.open() has not been called")
        return self._kv

    def open(self) -> TemplateStore:
        """Bind or create the bucket, load every slot into the registry, then follow later changes."""
        self.client.run(self._open(), self.timeout_s)
        return self

    async def _open(self) -> None:
        what = f"template bucket {self.bucket}: open"
        try:
            self._kv = await retried(lambda: self.client.js.key_value(self.bucket), what, self.timeout_s)
        except BucketNotFoundError:
            self._kv = await retried(lambda: self.client.js.create_key_value(
                bucket=self.bucket, history=1, replicas=self.replicas), what, self.timeout_s)
        watcher = await self.kv.watch("t.>")
        try:
            self._apply_all(await self._drain(watcher))
        except BaseException:
            await _halt(watcher)
            raise
        self._watcher = watcher
        self._follower = asyncio.create_task(self._follow(watcher))

    async def _drain(self, watcher: KeyValue.KeyWatcher) -> list[KeyValue.Entry]:
        """What a new watcher delivers before its end-of-initial-values marker."""
        entries = []
        while (entry := await _next(watcher, self.timeout_s)) is not None:
            entries.append(entry)
        return entries

    async def _follow(self, watcher: KeyValue.KeyWatcher) -> None:
        async for entry in watcher:
            if entry is not None:
                self._apply_all([entry])

    def _apply_all(self, entries: list[KeyValue.Entry]) -> dict[tuple[str, int], str]:
        """Apply entries in (template, slot) order; returns each slot's writer.

        A slot this cascade cannot read (written by hand, or by a newer
        format) is skipped loudly but still counted as taken, or every later
        put of the template would lose the race for it forever.
        """
        slots = []
        for entry in entries:
            if entry.operation in (KV_DEL, KV_PURGE):
                log.warning("template slot %s was deleted outside cascade; this node keeps what it read", entry.key)
                continue
            try:
                slots.append((*_slot(entry.key), entry))
            except ValueError as exc:
                log.error("template bucket %s: %s; skipped", self.bucket, exc)
        slots.sort(key=lambda s: (s[0], s[1]))
        writers = {}
        with self._lock:
            for template, n, entry in slots:
                try:
                    body = _value(entry.key, template, n, entry.value)
                    writers[(template, n)] = str(body.get("writer"))
                    self._apply(template, n, body)
                except Exception:  # noqa: BLE001 -- one bad value must not stop the node following the others
                    log.exception("template bucket %s: slot %s could not be applied; skipped", self.bucket, entry.key)
                    top, current = self._known.get(template, (0, None))
                    self._known[template] = (max(top, n), current)
        return writers

    def _apply(self, template: str, n: int, body: dict[str, Any]) -> TemplateVersion | None:
        """Slot `n` into the registry (under `_lock`); the version it holds, None for a deletion."""
        top, current = self._known.get(template, (0, None))
        if n <= top:  # applied already: our own write, a slot read back, or the watcher's copy of one
            if body["op"] == "put" and self.registry.version(template, n) is None:  # never happens in order
                tv = self.registry.restore(template, n, dict(body["body"]), float(body["created"]),
                                           float(body["updated"]))
                self._reassert(template, current)  # restore made it current; the newer slot stays so
                return tv
            return self.registry.version(template, n)
        if body["op"] == "delete":
            self._known[template] = (n, None)
            with contextlib.suppress(NotFound):
                self.registry.delete(template)
            return None
        tv = self.registry.restore(template, n, dict(body["body"]), float(body["created"]), float(body["updated"]))
        self._known[template] = (n, tv)
        return tv

    def put(self, template_id: str, body: Any, now: float) -> tuple[TemplateVersion, bool]:
        """Validate and store a new version in the next free slot; (version, whether it was a create)."""
        errs = validate_template(template_id, body)
        if errs:
            raise TemplateInvalid(f"template {template_id!r} is invalid: {errs[0][1]}", errs)
        normal = dict(TemplateRegistry().restore(template_id, 1, body, now, now).body)  # as a snapshot holds it
        return self.client.run(self._put(template_id, normal, now), self.timeout_s)

    async def _put(self, template_id: str, body: dict[str, Any], now: float) -> tuple[TemplateVersion, bool]:
        writer = uuid.uuid4().hex
        for _ in range(TRIES):
            top, current = self._known.get(template_id, (0, None))
            value = {"format": FORMAT, "op": "put", "template": template_id, "version": top + 1, "body": body,
                     "created": current.created_at if current else now, "updated": now, "writer": writer}
            if await self._create(template_id, top + 1, value):
                with self._lock:
                    tv = self._apply(template_id, top + 1, value)
                assert tv is not None
                return tv, current is None
        raise Conflict(f"template {template_id!r} is being changed by other nodes at the same time "
                       f"({TRIES} tries lost); try again")

    def delete(self, template_id: str) -> TemplateVersion:
        """Write a deletion marker in the next slot; returns the version that was current."""
        return self.client.run(self._delete(template_id), self.timeout_s)

    async def _delete(self, template_id: str) -> TemplateVersion:
        writer = uuid.uuid4().hex
        for _ in range(TRIES):
            top, current = self._known.get(template_id, (0, None))
            if current is None:
                raise NotFound(f"template {template_id!r} does not exist")
            value = {"format": FORMAT, "op": "delete", "template": template_id, "version": top + 1, "writer": writer}
            if await self._create(template_id, top + 1, value):
                with self._lock:
                    self._apply(template_id, top + 1, value)
                return current
        raise Conflict(f"template {template_id!r} is being changed by other nodes at the same time "
                       f"({TRIES} tries lost); try again")

    async def _create(self, template_id: str, n: int, value: dict[str, Any]) -> bool:
        """Create slot `n` with `value`; False (the template's slots read again) if another write has it.
        While the bucket's stream has no leader (just created, or a server lost) the create reaches nobody
        and is tried again, up to half of `timeout_s`; then Overloaded (a 503, not a 500)."""
        loop = asyncio.get_running_loop()
        give_up = loop.time() + self.timeout_s / 2
        attempt = 0
        while True:
            try:
                await self.kv.create(slot_key(template_id, n), json.dumps(value).encode())
                return True
            except NoStreamResponseError:  # nobody took it: nothing was written
                attempt += 1
                if loop.time() >= give_up:
                    raise Overloaded(f"the templates bucket {self.bucket} has no leader right now; retry shortly",
                                     retry_after_s=2) from None
                await asyncio.sleep(min(0.05 * attempt, 0.5))  # back-off while JetStream elects one
            except KeyWrongLastSequenceError:
                break
            except nats.errors.TimeoutError:  # the create may have landed with its ack lost: is the slot ours?
                return bool((await self._reread(template_id)).get((template_id, n)) == value["writer"])
        await self._reread(template_id)
        return False

    async def _reread(self, template_id: str) -> dict[tuple[str, int], str]:
        watcher = await self.kv.watch(f"t.{_escape(template_id)}.>")
        try:
            return self._apply_all(await self._drain(watcher))
        finally:
            await _halt(watcher)

    def catch_up(self, template_id: str) -> None:
        """Read one template's slots now (blocking): a node asked for a template it has not seen may be
        a moment behind a put on another node, and a client that just put it expects to use it."""
        self.client.run(self._reread(template_id), self.timeout_s)

    def reassert(self) -> None:
        """Make every template's current version the bucket's again (re-delete deleted ones).

        A template the registry holds that was never in the bucket (an old
        single-node snapshot's) is not current anywhere else: its current
        version is dropped too (its versions stay readable for its sends).
        """
        if self._kv is None:
            raise RuntimeError("TemplateStore.reassert() needs an open store: it would drop every template")
        with self._lock:
            for template, (_, current) in self._known.items():
                self._reassert(template, current)
            for tv in self.registry.all():
                if tv.id not in self._known:
                    with contextlib.suppress(NotFound):
                        self.registry.delete(tv.id)

    def _reassert(self, template: str, current: TemplateVersion | None) -> None:
        if current is not None:
            self.registry.install(current)
        else:
            with contextlib.suppress(NotFound):
                self.registry.delete(template)

    def close(self) -> None:
        """Stop following the bucket (bounded by `timeout_s`)."""
        watcher, self._watcher = self._watcher, None
        if watcher is None:
            return
        try:
            self.client.run(self._stop(watcher), self.timeout_s)
        except (RuntimeError, TimeoutError):  # the client closed first (its tasks are cancelled) or stalled
            log.warning("template watcher of %s did not stop cleanly", self.bucket, exc_info=True)

    async def _stop(self, watcher: KeyValue.KeyWatcher) -> None:
        await _halt(watcher)
        if self._follower is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait_for(self._follower, self.timeout_s)
