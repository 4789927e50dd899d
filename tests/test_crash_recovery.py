"""Crash recovery of the real `cascade serve` process (API.md: "A 2xx answer
to a write means the write is durable ... after a crash it is there"; rule 10;
§ Delivery to providers: at least once, same Idempotency-Key; issue 4).

The main test drives templates, recipients, sends (all with an
idempotencyKey), engagement events, inbox listings and manual-clock advances
from several concurrent clients, SIGKILLs the server at seeded random moments
over several rounds, restarts it on the same data dir and checks, each time:

- every acknowledged write is there: templates (version), recipients, sends
  (same id, at least the acknowledged state), accepted events (the signal is
  on the send), the manual clock (between the last acknowledged time and the
  one in doubt);
- repeating every send with its idempotencyKey answers 200 and the same id
  (writes in doubt are repeated the same way, as a client would);
- the push webhook saw every push the sends say fired, each POST carrying
  `Idempotency-Key: <messageId>`, and nothing else;
- GET /v1/templates/{id}/metrics matches what the send views imply.

At the end the clock runs two days on: every waiting step fires exactly on
its original deadline, and every send finishes.

It runs under journal_fsync batch, always and off ("off" still writes before
it answers, so a kill -9, unlike a power cut, loses nothing). SEED (env
CASCADE_CRASH_SEED) picks the kill moments and the clients' moves.

Then: SIGTERM writes a final snapshot and a restart replays nothing; the
manual clock resumes where it was after kill -9; and "crash images" taken at
chosen moments of an in-process server (a copy of the data dir while the
journal writer is held in its fdatasync, or while a snapshot is being
written) are what a kill -9 at that moment would leave.
"""

from __future__ import annotations

import asyncio
import functools
import os
import random
import threading
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from serverproc import (
    ADMIN,
    TEMPLATES,
    ServerProc,
    Sink,
    api,
    crash_image,
    eventually,
    inproc_settings,
    running,
    small_workload,
    snapshot_positions,
    state_of,
)

from cascade.domain.timefmt import parse_iso
from cascade.durability import coordinator as coordinator_module
from cascade.durability import service as durability_module
from cascade.engine.router import Router
from cascade.storage import FileJournal

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

SEED = int(os.environ.get("CASCADE_CRASH_SEED", "20261127"))
ROUNDS = 4
CLIENTS = 4
SENDS_PER_CLIENT_ROUND = 50
# Brand-new recipients during the drive (a recipient born between two snapshots
# was once left out of the second: test_recipients_created_between_two_snapshots_survive_kill_9).
NEW_RECIPIENTS = True
NET_ERRORS = (aiohttp.ClientError, asyncio.TimeoutError, ConnectionError)
TIMEOUT = aiohttp.ClientTimeout(total=8)




# -- what the clients were told ------------------------------------------------------------

@dataclass
class SendRec:
    key: str
    body: dict[str, Any]
    template: str
    id: str | None = None
    acked: dict[str, Any] | None = None  # the view of the acknowledged answer (202/200)
    doubt: bool = False  # posted, no answer: repeated after the restart


@dataclass
class EventRec:
    message_id: str
    type: str
    outcome: str  # accepted | duplicate | error:<code> | doubt


@dataclass
class RecipientRec:
    acked: dict[str, Any] | None = None
    doubt: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class Model:
    sends: dict[str, SendRec] = field(default_factory=dict)
    events: list[EventRec] = field(default_factory=list)
    recipients: dict[str, RecipientRec] = field(default_factory=dict)
    template_versions: dict[str, int] = field(default_factory=dict)  # acknowledged
    template_doubt: dict[str, int] = field(default_factory=dict)  # versions in doubt
    clock: float = 0.0  # last acknowledged manual-clock time
    clock_doubt: float | None = None  # an advance in doubt would have gone up to here
    unexpected: list[str] = field(default_factory=list)  # answers no client should ever get
    by_id: dict[str, SendRec] = field(default_factory=dict)

    def known(self, rec: SendRec, view: dict[str, Any]) -> None:
        rec.id = view["id"]
        self.by_id[rec.id] = rec


# -- the drive ---------------------------------------------------------------------------------

class Client:
    """One concurrent API user. Stops at the first network error (the server died)."""

    def __init__(self, n: int, model: Model, sink: Sink, base: str, rng: random.Random, round_no: int) -> None:
        self.n, self.model, self.sink, self.base, self.rng, self.round = n, model, sink, base, rng, round_no
        self.rids = [f"c{n}-u{j}" for j in range(4)] + [f"c{n}-nopush"]

    async def run(self, stop: asyncio.Event) -> None:
        async with aiohttp.ClientSession(self.base, headers=ADMIN, timeout=TIMEOUT) as http:
            self.http = http
            sends = 0
            for _ in range(2000):  # bounded
                if stop.is_set():
                    return
                roll = self.rng.random()
                try:
                    if roll < 0.40 and sends < SENDS_PER_CLIENT_ROUND:
                        sends += 1
                        await self.new_send()
                    elif roll < 0.70:
                        await self.event()
                    elif roll < 0.80:
                        await self.put_recipient()
                    elif roll < 0.86:
                        await self.inbox()
                    elif roll < 0.88:
                        await self.cancel()
                    elif roll < 0.90 and self.n == 0:
                        await self.put_template()
                    elif roll < 0.91 and NEW_RECIPIENTS:
                        await self.new_recipient()
                    else:
                        await self.read()
                except NET_ERRORS:
                    return
                await asyncio.sleep(self.rng.uniform(0, 0.006))

    def note(self, what: str, status: int, text: str) -> None:
        self.model.unexpected.append(f"client {self.n} {what}: HTTP {status} {text[:300]}")

    async def new_send(self) -> None:
        m = self.model
        key = f"r{self.round}-c{self.n}-{len(m.sends)}"
        tid = self.rng.choice(sorted(TEMPLATES))
        rid = self.rng.choice(self.rids)
        rec = m.sends[key] = SendRec(key, {"template": tid, "recipient": rid, "data": {"order": {"id": key}},
                                           "idempotencyKey": key}, tid, doubt=True)
        async with self.http.post("/v1/sends", json=rec.body) as r:
            text = await r.text()
            if r.status == 202:
                view = await r.json()
                rec.acked, rec.doubt = view, False
                m.known(rec, view)
            elif r.status != 503:
                self.note("POST /v1/sends", r.status, text)

    async def event(self) -> None:
        m = self.model
        acked = [s for s in m.sends.values() if s.acked is not None]
        if not acked:
            return
        rec = self.rng.choice(acked)
        assert rec.acked is not None
        step = self.rng.choice(rec.acked["steps"])
        mid, channel = step["messageId"], step["channel"]
        if channel == "push":
            if mid not in self.sink.message_ids():
                return  # a provider reports back only on what it received
            kind = self.rng.choice(["delivered", "clicked", "clicked", "failed"])
        else:
            kind = self.rng.choice(["viewed", "viewed", "clicked", "failed"])
        ev = EventRec(mid, kind, "doubt")
        m.events.append(ev)
        body = ({"messageId": mid, "type": kind} if self.rng.random() < 0.8
                else {"sendId": rec.id, "channel": channel, "type": kind})
        async with self.http.post("/v1/events", json=body) as r:
            text = await r.text()
            if r.status == 200:
                ev.outcome = outcome_of(await r.json())
            elif r.status != 503:
                self.note("POST /v1/events", r.status, text)

    async def put_recipient(self) -> None:
        rid = self.rng.choice(self.rids[:4])  # c<n>-nopush never gets a push token
        body = {"pushTokens": [f"tok-{rid}-{self.rng.randrange(10**6)}"], "email": f"{rid}@example.com"}
        rec = self.model.recipients.setdefault(rid, RecipientRec())
        rec.doubt.append(body)
        async with self.http.put(f"/v1/recipients/{rid}", json=body) as r:
            text = await r.text()
            if r.status == 200:
                rec.acked, rec.doubt = body, []
            elif r.status != 503:
                self.note("PUT /v1/recipients", r.status, text)

    async def new_recipient(self) -> None:
        rid = f"c{self.n}-new{len(self.model.recipients)}"
        body = {"pushTokens": [f"tok-{rid}"], "email": f"{rid}@example.com"}
        rec = self.model.recipients.setdefault(rid, RecipientRec())
        rec.doubt.append(body)
        async with self.http.put(f"/v1/recipients/{rid}", json=body) as r:
            text = await r.text()
            if r.status == 200:
                rec.acked, rec.doubt = body, []
                self.rids.append(rid)
            elif r.status != 503:
                self.note("PUT /v1/recipients (new)", r.status, text)

    async def cancel(self) -> None:
        m = self.model
        mine = [s for s in m.sends.values() if s.acked is not None and s.key.startswith(f"r{self.round}-c{self.n}-")]
        if not mine:
            return
        rec = self.rng.choice(mine)
        async with self.http.delete(f"/v1/sends/{rec.id}") as r:
            text = await r.text()
            if r.status == 200:
                rec.acked = await r.json()  # a write's answer: durable
            elif r.status not in (409, 503):
                self.note("DELETE /v1/sends", r.status, text)

    async def inbox(self) -> None:
        async with self.http.get(f"/v1/recipients/{self.rng.choice(self.rids)}/inbox") as r:
            text = await r.text()
            if r.status not in (200, 404, 503):
                self.note("GET inbox", r.status, text)

    async def put_template(self) -> None:
        m = self.model
        tid = self.rng.choice(sorted(TEMPLATES))
        m.template_doubt[tid] = m.template_doubt.get(tid, 0) + 1
        async with self.http.put(f"/v1/templates/{tid}", json=TEMPLATES[tid](self.rng.randrange(1000))) as r:
            text = await r.text()
            if r.status in (200, 201):
                m.template_versions[tid] = (await r.json())["version"]
                m.template_doubt[tid] = 0
            elif r.status != 503:
                self.note("PUT /v1/templates", r.status, text)

    async def read(self) -> None:
        m = self.model
        if self.rng.random() < 0.5 and m.by_id:
            sid = self.rng.choice(sorted(m.by_id))
            async with self.http.get(f"/v1/sends/{sid}") as r:
                if r.status != 200:
                    self.note("GET /v1/sends", r.status, await r.text())
        else:
            async with self.http.get(f"/v1/templates/{self.rng.choice(sorted(TEMPLATES))}/metrics") as r:
                if r.status != 200:
                    self.note("GET metrics", r.status, await r.text())


async def clock_client(model: Model, base: str, rng: random.Random, stop: asyncio.Event) -> None:
    """Moves the manual clock on by 1-3 minutes now and then: windows end during the drive."""
    async with aiohttp.ClientSession(base, headers=ADMIN, timeout=TIMEOUT) as http:
        for _ in range(500):
            await asyncio.sleep(rng.uniform(0.03, 0.12))
            if stop.is_set():
                return
            seconds = rng.uniform(60, 180)
            model.clock_doubt = model.clock + seconds
            try:
                async with http.post("/v1/admin/clock", json={"advanceSeconds": seconds}) as r:
                    text = await r.text()
                    if r.status != 200:
                        model.unexpected.append(f"POST /v1/admin/clock: HTTP {r.status} {text[:300]}")
                        return
                    model.clock, model.clock_doubt = parse_iso((await r.json())["now"]), None
            except NET_ERRORS:
                return


def outcome_of(answer: dict[str, Any]) -> str:
    if answer["accepted"] == 1:
        return "accepted"
    if answer["duplicates"] == 1:
        return "duplicate"
    return "error:" + answer["errors"][0]["code"]


# -- checks after a restart --------------------------------------------------------------------

def step_progress_ok(before: str, after: str) -> bool:
    if before == "pending":
        return True
    if before == "waiting":
        return after != "pending"
    if before == "fired":  # a late engagement on it may stop the chain afterwards (rule 3)
        return after in ("fired", "stopped")
    return after == before


def at_least(acked: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """What in `now` falls short of the acknowledged view `acked`."""
    sid, out = acked["id"], []
    for k in ("id", "template", "templateVersion", "recipient", "createdAt"):
        if now[k] != acked[k]:
            out.append(f"{sid}: {k} {acked[k]!r} became {now[k]!r}")
    if acked["status"] != "active" and now["status"] != acked["status"]:
        out.append(f"{sid}: status {acked['status']} became {now['status']}")
    for k in ("finishedAt", "stoppedBy"):
        if acked[k] is not None and now[k] != acked[k]:
            out.append(f"{sid}: {k} {acked[k]!r} became {now[k]!r}")
    for a, b in zip(acked["steps"], now["steps"]):
        if not step_progress_ok(a["status"], b["status"]):
            out.append(f"{sid} step {a['step']}: status {a['status']} went back to {b['status']}")
        for k in ("firedAt", "deadline", "reason"):
            if a[k] is not None and b[k] != a[k]:
                out.append(f"{sid} step {a['step']}: {k} {a[k]!r} became {b[k]!r}")
        for sig, at in a["signals"].items():
            if at is not None and b["signals"][sig] != at:
                out.append(f"{sid} step {a['step']}: signal {sig} at {at} became {b['signals'][sig]!r}")
    return out


def implied_metrics(tid: str, views: list[dict[str, Any]], failed: Counter[str]) -> dict[str, Any]:
    """The metrics block the send views (and the failed signals accepted) imply."""
    statuses = Counter(v["status"] for v in views)
    sends = {"started": len(views), **{s: statuses[s] for s in ("active", "stopped", "completed", "cancelled",
                                                                  "failed")}}
    steps: dict[int, dict[str, Any]] = {}
    for v in views:
        n = len(v["steps"])
        for i, st in enumerate(v["steps"]):
            row = steps.setdefault(st["step"], {"step": st["step"], "channel": st["channel"], "requested": 0,
                                                "delivered": 0, "viewed": 0 if st["channel"] != "push" else None,
                                                "clicked": 0, "failed": 0, "skipped": 0, "stopped": 0,
                                                "escalated": 0})
            status = st["status"]
            row["requested"] += status not in ("pending", "skipped")
            row["skipped"] += status == "skipped"
            row["stopped"] += status == "stopped"
            if i < n - 1 and status in ("fired", "stopped") and v["steps"][i + 1]["status"] != "pending":
                row["escalated"] += 1
            for sig, at in st["signals"].items():
                if at is not None:
                    row[sig] += 1
            row["failed"] += failed[st["messageId"]]
    return {"template": tid, "sends": sends, "steps": [steps[k] for k in sorted(steps)]}


class Checker:
    def __init__(self, model: Model, sink: Sink, http: aiohttp.ClientSession, label: str) -> None:
        self.model, self.sink, self.http, self.label = model, sink, http, label
        self.sem = asyncio.Semaphore(16)

    async def json(self, method: str, path: str, body: Any = None, ok: tuple[int, ...] = (200,)) -> tuple[int, Any]:
        async with self.sem, self.http.request(method, path, json=body) as r:
            text = await r.text()
            assert r.status in ok, f"[{self.label}] {method} {path}: HTTP {r.status} {text[:500]}"
            return r.status, (await r.json()) if text else None

    async def clock_and_catalogue(self) -> list[str]:
        m, problems = self.model, []
        _, clock = await self.json("GET", "/v1/admin/clock")
        now = parse_iso(clock["now"])
        high = m.clock_doubt if m.clock_doubt is not None else m.clock
        if not (m.clock - 0.002 <= now <= high + 0.002):
            problems.append(f"clock resumed at {clock['now']}, acknowledged {m.clock:.3f}, in doubt {m.clock_doubt}")
        m.clock, m.clock_doubt = now, None
        for tid in TEMPLATES:
            _, tpl = await self.json("GET", f"/v1/templates/{tid}")
            acked, doubt = m.template_versions[tid], m.template_doubt.get(tid, 0)
            if not acked <= tpl["version"] <= acked + doubt:
                problems.append(f"template {tid} is at version {tpl['version']}, acknowledged {acked} (+{doubt} in doubt)")
            m.template_versions[tid], m.template_doubt[tid] = tpl["version"], 0
        for rid, rec in sorted(m.recipients.items()):
            status, view = await self.json("GET", f"/v1/recipients/{rid}", ok=(200, 404))
            got = {k: view.get(k) for k in ("pushTokens", "email")} if status == 200 else None
            allowed = ([rec.acked] if rec.acked is not None else [None]) + rec.doubt
            if got not in allowed:
                problems.append(f"recipient {rid} is {got}, acknowledged {rec.acked}, in doubt {rec.doubt}")
            rec.acked, rec.doubt = got, []
        return problems

    async def resend_all(self) -> list[str]:
        """Repeat every send with its idempotencyKey: 200 + same id for those acknowledged;
        those in doubt get their answer now (200 if they survived, 202 if not)."""
        problems: list[str] = []

        async def one(rec: SendRec) -> None:
            status, view = await self.json("POST", "/v1/sends", rec.body, ok=(200, 202))
            if rec.acked is not None:
                if status != 200 or view["id"] != rec.id:
                    problems.append(f"idempotencyKey {rec.key} of acknowledged send {rec.id} answered "
                                    f"{status} with {view['id']}")
                return
            if status == 202 and rec.id is not None:
                problems.append(f"idempotencyKey {rec.key}: send {rec.id} was answered before, now a new one")
            rec.acked, rec.doubt = view, False
            self.model.known(rec, view)

        await asyncio.gather(*(one(rec) for rec in self.model.sends.values()))
        return problems

    async def repeat_doubtful_events(self) -> None:
        async def one(ev: EventRec) -> None:
            _, answer = await self.json("POST", "/v1/events", {"messageId": ev.message_id, "type": ev.type})
            ev.outcome = outcome_of(answer)

        await asyncio.gather(*(one(ev) for ev in self.model.events if ev.outcome == "doubt"))

    async def views(self) -> dict[str, dict[str, Any]]:
        async def one(sid: str) -> tuple[str, dict[str, Any]]:
            return sid, (await self.json("GET", f"/v1/sends/{sid}"))[1]

        return dict(await asyncio.gather(*(one(sid) for sid in self.model.by_id)))

    async def durable_state(self, views: dict[str, dict[str, Any]]) -> list[str]:
        problems: list[str] = []
        for rec in self.model.sends.values():
            assert rec.acked is not None and rec.id is not None
            problems += at_least(rec.acked, views[rec.id])
        signal_of = {"viewed", "clicked", "delivered"}
        for ev in self.model.events:
            if ev.outcome in ("accepted", "duplicate") and ev.type in signal_of:
                sid, step = ev.message_id.rsplit(".", 1)
                st = views[sid]["steps"][int(step) - 1]
                if st["signals"][ev.type] is None:
                    problems.append(f"event {ev.type} on {ev.message_id} was {ev.outcome}, the send lacks it")
        _, clock = await self.json("GET", "/v1/admin/clock")
        for sid, v in views.items():
            for st in v["steps"]:
                if st["status"] == "waiting" and parse_iso(st["deadline"]) <= parse_iso(clock["now"]):
                    problems.append(f"{st['messageId']} still waits past its deadline {st['deadline']}")
        return problems

    async def consistent(self) -> list[str]:
        """Metrics vs. views, webhook vs. views: polled until the redrive settles."""
        problems: list[str] = []
        views = await self.views()
        failed: Counter[str] = Counter()
        for mid in {ev.message_id for ev in self.model.events if ev.type == "failed"
                    and ev.outcome in ("accepted", "duplicate")}:
            failed[mid] = 1
        for tid in TEMPLATES:
            mine = [v for v in views.values() if v["template"] == tid]
            _, got = await self.json("GET", f"/v1/templates/{tid}/metrics")
            want = implied_metrics(tid, mine, failed)
            if got != want:
                problems.append(f"metrics of {tid}: server {got}\n  views imply {want}")
        fired = {st["messageId"] for v in views.values() for st in v["steps"]
                 if st["channel"] == "push" and st["status"] not in ("pending", "skipped")}
        # A cancelled send is not handed over again: its push may have died with the server.
        owed = {st["messageId"] for v in views.values() if v["status"] != "cancelled" for st in v["steps"]} & fired
        seen = self.sink.message_ids()
        if seen - fired:
            problems.append(f"the webhook got pushes no send says fired: {sorted(seen - fired)[:10]}")
        if owed - seen:
            problems.append(f"pushes fired but never posted to the webhook: {sorted(owed - seen)[:10]}")
        if self.sink.in_flight:
            problems.append(f"{self.sink.in_flight} webhook posts in flight")
        return problems


def check_webhook_posts(sink: Sink) -> tuple[int, int]:
    bad = [p for p in sink.posts + sink.refused if p.idempotency_key != p.message_id]
    assert not bad, f"posts whose Idempotency-Key is not their messageId: {bad[:5]}"
    return len(sink.posts), len(sink.message_ids())


async def verify(model: Model, sink: Sink, serve: ServerProc, label: str, resend: bool = True) -> None:
    """`resend=False` once the clock has run past the 24 h that idempotency keys are kept."""
    assert not model.unexpected, "\n".join(model.unexpected[:20])
    async with aiohttp.ClientSession(serve.base, headers=ADMIN, timeout=TIMEOUT) as http:
        c = Checker(model, sink, http, label)
        problems = await c.clock_and_catalogue()
        if resend:
            problems += await c.resend_all()
        await c.repeat_doubtful_events()
        problems += await c.durable_state(await c.views())
        assert not problems, f"[{label}, seed {SEED}] acknowledged state lost:\n" + "\n".join(problems[:30])
        last: list[str] = []

        async def settled() -> bool:
            nonlocal last
            last = await c.consistent()
            return not last

        try:
            await eventually(settled, "metrics and webhook to match the sends", timeout=15, interval=0.1)
        except AssertionError:
            raise AssertionError(f"[{label}, seed {SEED}] inconsistent:\n" + "\n".join(last)) from None
    check_webhook_posts(sink)


@pytest.fixture
async def sink() -> Any:
    s = await Sink(max_delay_s=0.25, seed=SEED, fail_first=0.1).start()  # slow enough that kills land mid-delivery
    try:
        yield s
    finally:
        await s.close()


@pytest.fixture(params=["batch", "always", "off"])
def serve(tmp_path: Path, sink: Sink, request: pytest.FixtureRequest) -> Any:
    """journal_fsync "off" still writes before it answers: a kill -9 (not a power cut) loses nothing."""
    proc = ServerProc(tmp_path, tmp_path / "data", push_url=sink.url, snapshot_interval_s=0.5, fsync=request.param)
    try:
        yield proc
    finally:
        proc.cleanup()


async def setup_catalogue(model: Model, serve: ServerProc) -> None:
    async with aiohttp.ClientSession(serve.base, headers=ADMIN, timeout=TIMEOUT) as http:
        for tid, make in TEMPLATES.items():
            async with http.put(f"/v1/templates/{tid}", json=make(0)) as r:
                assert r.status == 201, await r.text()
                model.template_versions[tid] = (await r.json())["version"]
        for n in range(CLIENTS):
            for j in range(4):
                rid, body = f"c{n}-u{j}", {"pushTokens": [f"tok-c{n}-u{j}"], "email": f"c{n}-u{j}@example.com"}
                async with http.put(f"/v1/recipients/{rid}", json=body) as r:
                    assert r.status == 200, await r.text()
                model.recipients[rid] = RecipientRec(acked=body)
            rid = f"c{n}-nopush"
            async with http.put(f"/v1/recipients/{rid}", json={"email": f"{rid}@example.com"}) as r:
                assert r.status == 200, await r.text()
            model.recipients[rid] = RecipientRec(acked={"pushTokens": [], "email": f"{rid}@example.com"})
        async with http.get("/v1/admin/clock") as r:
            model.clock = parse_iso((await r.json())["now"])


async def test_kill_9_at_random_moments_loses_nothing_acknowledged(serve: ServerProc, sink: Sink) -> None:
    rng = random.Random(f"{SEED}-{serve.fsync}")
    model = Model()
    serve.start()
    await serve.wait_ready()
    await setup_catalogue(model, serve)
    async with aiohttp.ClientSession(serve.base, headers=ADMIN) as http:  # recipients as the server shows them
        for rid, rec in model.recipients.items():
            async with http.get(f"/v1/recipients/{rid}") as r:
                view = await r.json()
                rec.acked = {k: view.get(k) for k in ("pushTokens", "email")}
    kills: list[tuple[float, int | None, int]] = []
    redriven = partial_sets = 0
    for round_no in range(1, ROUNDS + 1):
        stop = asyncio.Event()
        clients = [Client(n, model, sink, serve.base, random.Random(rng.random()), round_no) for n in range(CLIENTS)]
        tasks = [asyncio.create_task(c.run(stop)) for c in clients]
        tasks.append(asyncio.create_task(clock_client(model, serve.base, random.Random(rng.random()), stop)))
        delay = rng.uniform(0.25, 1.0)
        await asyncio.sleep(delay)
        serve.kill9()
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks), 20)
        assert not model.unexpected, "\n".join(model.unexpected[:20])
        serve.start()
        await serve.wait_ready()
        [recovery] = serve.events("recovery")
        redriven += sum(e["messages"] for e in serve.events("redrive"))
        kills.append((round(delay, 3), recovery["snapshot_position"], recovery["replayed"]))
        await verify(model, sink, serve, f"round {round_no}")
        partial_sets += len([line for line in serve.log_lines() if "never finished" in line.get("msg", "")])
        assert not [line for line in serve.log_lines() if line.get("level") in ("error", "critical")], \
            serve.log_text()

    # Every pending step fires once, on its original deadline, once the clock passes it.
    async with aiohttp.ClientSession(serve.base, headers=ADMIN, timeout=TIMEOUT) as http:
        async with http.post("/v1/admin/clock", json={"advanceSeconds": 2 * 86400}) as r:
            assert r.status == 200, await r.text()
            model.clock = parse_iso((await r.json())["now"])
    await verify(model, sink, serve, "after the clock ran out", resend=False)
    async with aiohttp.ClientSession(serve.base, headers=ADMIN, timeout=TIMEOUT) as http:
        views = await Checker(model, sink, http, "final").views()
    escalations = 0
    for v in views.values():
        assert v["status"] in ("stopped", "completed", "failed", "cancelled"), v
        steps = v["steps"]
        for a, b in zip(steps, steps[1:]):
            if a["status"] in ("fired", "stopped") and b["status"] not in ("pending", "skipped"):
                escalations += 1
                assert b["firedAt"] == a["deadline"], (f"{b['messageId']} fired at {b['firedAt']}, "
                                                       f"its deadline was {a['deadline']}: {v}")
    posts, distinct = check_webhook_posts(sink)
    fired_pushes = sum(st["channel"] == "push" and st["status"] not in ("pending", "skipped")
                       for v in views.values() for st in v["steps"])
    owed = sum(st["channel"] == "push" and st["status"] not in ("pending", "skipped", "cancelled")
               for v in views.values() if v["status"] != "cancelled" for st in v["steps"])
    assert owed <= distinct <= fired_pushes, (owed, distinct, fired_pushes)
    assert escalations > 0 and len(views) > 100, (escalations, len(views))
    print(f"seed {SEED}, fsync {serve.fsync}: kills (delay s, snapshot position, records replayed) {kills}; {len(views)} sends, "
          f"{len(model.events)} events, {escalations} timer escalations, {fired_pushes} pushes fired, "
          f"{posts} webhook posts ({posts - distinct} repeated after a crash; {redriven} handed over again; "
          f"{len(sink.refused)} refused once and retried); "
          f"{partial_sets} restarts skipped a snapshot set a kill had interrupted")

    serve.terminate()
    assert await serve.wait_exit() == 0, serve.log_text()


# -- graceful stop, and the manual clock --------------------------------------------------------

async def test_sigterm_writes_a_final_snapshot_and_the_restart_replays_nothing(tmp_path: Path, sink: Sink) -> None:
    serve = ServerProc(tmp_path, tmp_path / "data", push_url=sink.url, snapshot_interval_s=3600)
    try:
        serve.start()
        await serve.wait_ready()
        async with aiohttp.ClientSession(serve.base, headers=ADMIN, timeout=TIMEOUT) as http:
            ids = await small_workload(http, "a")
            taken = await api(http, "POST", "/v1/admin/snapshots")
            ids += await small_workload(http, "b")
            await api(http, "POST", "/v1/admin/clock", {"advanceSeconds": 400})  # seq-a escalates to push
            await eventually(lambda: asyncio.sleep(0, not sink.in_flight and len(sink.message_ids()) >= 12),
                             "the pushes")
            before = await state_of(http, ids)
        snapshots_before = snapshot_positions(serve.data_dir)
        assert snapshots_before == [taken["journalPosition"]]
        serve.terminate()
        assert await serve.wait_exit() == 0, serve.log_text()
        msgs = [line.get("msg", "") for line in serve.log_lines()]
        stopping = next(i for i, m in enumerate(msgs) if m.startswith("stopping"))
        assert any(m.startswith("snapshot written") for m in msgs[stopping:]), serve.log_text()
        final = snapshot_positions(serve.data_dir)[0]
        assert final > taken["journalPosition"], (final, taken)
        posts = len(sink.posts)

        serve.start()
        await serve.wait_ready()
        [recovery] = serve.events("recovery")
        assert recovery["snapshot_position"] == final and recovery["skipped_sets"] == []
        assert recovery["replayed"] == 0, recovery
        assert not serve.events("redrive"), "a clean stop left deliveries unanswered"
        async with aiohttp.ClientSession(serve.base, headers=ADMIN, timeout=TIMEOUT) as http:
            assert await state_of(http, ids) == before
        assert len(sink.posts) == posts
    finally:
        serve.cleanup()


async def test_recipients_created_between_two_snapshots_survive_kill_9(tmp_path: Path) -> None:
    serve = ServerProc(tmp_path, tmp_path / "data", snapshot_interval_s=3600)
    try:
        serve.start()
        await serve.wait_ready()
        async with aiohttp.ClientSession(serve.base, headers=ADMIN, timeout=TIMEOUT) as http:
            await api(http, "PUT", "/v1/templates/seq-a", TEMPLATES["seq-a"](0))
            await api(http, "PUT", "/v1/recipients/early", {"pushTokens": ["t0"]})
            await api(http, "POST", "/v1/admin/snapshots")
            await api(http, "PUT", "/v1/recipients/later", {"email": "later@example.com", "pushTokens": ["t1"]})
            sent = await api(http, "POST", "/v1/sends", {"template": "seq-a", "recipient": {
                "id": "upserted", "pushTokens": ["t2"], "preferences": {"push": False}}})
            await api(http, "POST", "/v1/admin/snapshots")
            before = [await api(http, "GET", f"/v1/recipients/{rid}") for rid in ("early", "later", "upserted")]
            inbox = await api(http, "GET", "/v1/recipients/upserted/inbox")
        assert [m["messageId"] for m in inbox["messages"]] == [f"{sent['id']}.1"]
        serve.kill9()
        serve.start()
        await serve.wait_ready()
        async with aiohttp.ClientSession(serve.base, headers=ADMIN, timeout=TIMEOUT) as http:
            after = [await api(http, "GET", f"/v1/recipients/{rid}") for rid in ("early", "later", "upserted")]
            assert after == before
            again = await api(http, "GET", "/v1/recipients/upserted/inbox")
            assert [m["messageId"] for m in again["messages"]] == [f"{sent['id']}.1"]
    finally:
        serve.cleanup()


@pytest.mark.parametrize("snapshot", [False, True], ids=["journal-only", "after-a-snapshot"])
async def test_the_manual_clock_resumes_where_it_was_after_kill_9(tmp_path: Path, snapshot: bool) -> None:
    serve = ServerProc(tmp_path, tmp_path / "data", snapshot_interval_s=3600)
    try:
        serve.start()
        await serve.wait_ready()
        async with aiohttp.ClientSession(serve.base, headers=ADMIN, timeout=TIMEOUT) as http:
            ids = await small_workload(http, "a", n=4)
            first = await api(http, "POST", "/v1/admin/clock", {"advanceSeconds": 3600})
            if snapshot:
                await api(http, "POST", "/v1/admin/snapshots")
            moved = await api(http, "POST", "/v1/admin/clock", {"advanceSeconds": 90.5})
            assert parse_iso(moved["now"]) - parse_iso(first["now"]) == pytest.approx(90.5, abs=0.002)
            before = await state_of(http, ids)
        serve.kill9()
        serve.start()
        await serve.wait_ready()
        async with aiohttp.ClientSession(serve.base, headers=ADMIN, timeout=TIMEOUT) as http:
            assert (await api(http, "GET", "/v1/admin/clock"))["now"] == moved["now"]
            assert await state_of(http, ids) == before
            again = await api(http, "POST", "/v1/admin/clock", {"advanceSeconds": 10})
            assert parse_iso(again["now"]) - parse_iso(moved["now"]) == pytest.approx(10, abs=0.002)
    finally:
        serve.cleanup()


async def test_the_manual_clock_resumes_after_kill_9_when_only_templates_were_written(tmp_path: Path) -> None:
    """Nothing with a time of its own was journaled yet (no send, no advance). Regression (d95e218): the
    clock restarted at the new real time, as its start time was never journaled."""
    serve = ServerProc(tmp_path, tmp_path / "data", snapshot_interval_s=3600)
    try:
        serve.start()
        await serve.wait_ready()
        async with aiohttp.ClientSession(serve.base, headers=ADMIN, timeout=TIMEOUT) as http:
            tpl = await api(http, "PUT", "/v1/templates/seq-a", TEMPLATES["seq-a"](0))
            clock = await api(http, "GET", "/v1/admin/clock")
        await asyncio.sleep(0.05)
        serve.kill9()
        serve.start()
        await serve.wait_ready()
        async with aiohttp.ClientSession(serve.base, headers=ADMIN, timeout=TIMEOUT) as http:
            assert (await api(http, "GET", "/v1/templates/seq-a"))["createdAt"] == tpl["createdAt"]
            assert (await api(http, "GET", "/v1/admin/clock"))["now"] == clock["now"]
    finally:
        serve.cleanup()


async def test_the_stats_series_counts_what_happened_after_its_last_save_after_kill_9(tmp_path: Path) -> None:
    """The series file is saved once a minute; what came after it is in the journal, and a restart counts it
    (before: the restart's first reading took it as a baseline, and the series lost those sends)."""
    serve = ServerProc(tmp_path, tmp_path / "data", snapshot_interval_s=3600)
    try:
        serve.start()
        await serve.wait_ready()
        async with aiohttp.ClientSession(serve.base, headers=ADMIN, timeout=TIMEOUT) as http:
            ids = await small_workload(http, "a", n=6)
            before = await api(http, "GET", "/v1/stats/series?minutes=120")
            ids += await small_workload(http, "b", n=4)  # after the last reading too
        assert sum(p["sendsStarted"] for p in before["points"]) == 6
        serve.kill9()
        serve.start()
        await serve.wait_ready()
        async with aiohttp.ClientSession(serve.base, headers=ADMIN, timeout=TIMEOUT) as http:
            after = await api(http, "GET", "/v1/stats/series?minutes=120")
            requested = sum(p["channels"]["inapp"]["requested"] + p["channels"]["push"]["requested"]
                            for p in after["points"])
            assert sum(p["sendsStarted"] for p in after["points"]) == len(ids), after["points"]
            metrics = [await api(http, "GET", f"/v1/templates/{t}/metrics") for t in TEMPLATES]
            assert requested == sum(step["requested"] for m in metrics for step in m["steps"]) >= len(ids)
            again = await api(http, "GET", "/v1/stats/series?minutes=120")
        assert again["points"] == after["points"]  # counted once
    finally:
        serve.cleanup()


# -- crash images at chosen moments (in-process server, fault injection) ------------------------
#
# A kill -9 keeps what the journal writer has written (the page cache survives
# the process) and loses what is still queued in memory. Holding the writer in
# its fdatasync makes that moment last: later records queue unwritten, and a
# copy of the data directory taken then is exactly what a kill -9 would leave.

class HeldSync:
    """An fdatasync that can be held shut; `holding` is set once the writer waits in it."""

    def __init__(self) -> None:
        self.open = threading.Event()
        self.open.set()
        self.holding = threading.Event()

    def __call__(self, fd: int) -> None:
        if not self.open.is_set():
            self.holding.set()
            self.open.wait(30)
        os.fdatasync(fd)


@pytest.fixture
def held(monkeypatch: pytest.MonkeyPatch) -> HeldSync:
    sync = HeldSync()
    monkeypatch.setattr(durability_module, "FileJournal", functools.partial(FileJournal, fdatasync=sync))
    return sync


SEND = {"template": "seq-a", "recipient": "u1", "data": {"order": {"id": "A1"}}, "idempotencyKey": "order-A1"}


async def test_sends_started_while_a_snapshot_is_written_keep_their_idempotency_keys(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Regression (ef5dec9): a send whose journal record fell between the positions of two files of one
    set was in no file's idempotency keys, so a retry after recovery made a second send. Here sends start
    after each file of the set is written, whatever order the files are written in."""
    loop = asyncio.get_running_loop()
    made: list[tuple[dict[str, Any], dict[str, Any]]] = []
    write = coordinator_module.write_snapshot

    def then_sends(directory: str, shard: int, header: dict[str, Any], records: Any) -> Any:
        info = write(directory, shard, header, records)
        for rid in ("u1", "u2", "u3", "u4"):  # over both shards
            body = {**SEND, "recipient": rid, "idempotencyKey": f"after-file-{shard}-{rid}"}
            made.append((body, asyncio.run_coroutine_threadsafe(api(http, "POST", "/v1/sends", body),
                                                                loop).result(10)))
        return info

    async with running(inproc_settings(tmp_path, tmp_path / "data")) as (server, http):
        await api(http, "PUT", "/v1/templates/seq-a", TEMPLATES["seq-a"](0))
        for rid in ("u1", "u2", "u3", "u4"):
            await api(http, "PUT", f"/v1/recipients/{rid}", {"pushTokens": ["t"]})
        monkeypatch.setattr(coordinator_module, "write_snapshot", then_sends)
        await api(http, "POST", "/v1/admin/snapshots")
        monkeypatch.undo()
        assert len(made) == 12  # the front and two shard files
        crash_image(server, tmp_path / "crash")
    async with running(inproc_settings(tmp_path, tmp_path / "crash")) as (_, http):
        for body, sent in made:
            async with http.post("/v1/sends", json=body) as r:
                assert (r.status, (await r.json())["id"]) == (200, sent["id"]), body["idempotencyKey"]


async def test_a_repeated_idempotency_key_is_answered_only_once_the_send_is_durable(
        tmp_path: Path, held: HeldSync) -> None:
    async with running(inproc_settings(tmp_path, tmp_path / "data")) as (server, http):
        await api(http, "PUT", "/v1/templates/seq-a", TEMPLATES["seq-a"](0))
        await api(http, "PUT", "/v1/recipients/u1", {"pushTokens": ["t"]})
        journal = server.durability.journal  # type: ignore[union-attr]
        held.open.clear()
        slow = asyncio.create_task(api(http, "PUT", "/v1/recipients/u2", {"email": "u2@example.com"}))
        await eventually(lambda: asyncio.sleep(0, held.holding.is_set()), "the writer to sync")
        position = journal.position()
        first = asyncio.create_task(api(http, "POST", "/v1/sends", SEND))  # queued behind the held sync
        await eventually(lambda: asyncio.sleep(0, journal.position() > position), "the send's record")
        try:
            async with http.post("/v1/sends", json=SEND, timeout=aiohttp.ClientTimeout(total=1)) as r:
                repeat: tuple[int, Any] | None = (r.status, await r.json())
        except asyncio.TimeoutError:
            repeat = None  # right: no answer until the send is durable
        crash_image(server, tmp_path / "crash")
        held.open.set()
        await slow
        await first
    if repeat is None:
        return
    status, view = repeat
    assert status == 200
    async with running(inproc_settings(tmp_path, tmp_path / "crash")) as (_, http):
        async with http.get(f"/v1/sends/{view['id']}") as r:
            assert r.status == 200, f"the repeat answered 200 with {view['id']}, which the crash lost"


async def test_a_kill_9_right_after_a_snapshot_under_load_still_restarts(tmp_path: Path, held: HeldSync) -> None:
    """Regression (d95e218): a snapshot named journal positions still queued in memory; a kill -9 before the
    writer caught up left a set ahead of the journal, and recovery refused to start."""
    async with running(inproc_settings(tmp_path, tmp_path / "data")) as (server, http):
        await api(http, "PUT", "/v1/templates/seq-a", TEMPLATES["seq-a"](0))
        await api(http, "PUT", "/v1/recipients/u1", {"pushTokens": ["t"]})
        sent = await api(http, "POST", "/v1/sends", SEND)
        journal = server.durability.journal  # type: ignore[union-attr]
        held.open.clear()
        slow = asyncio.create_task(api(http, "PUT", "/v1/recipients/u2", {"email": "u2@example.com"}))
        await eventually(lambda: asyncio.sleep(0, held.holding.is_set()), "the writer to sync")
        position = journal.position()
        queued = asyncio.create_task(api(http, "PUT", "/v1/recipients/u3", {"email": "u3@example.com"}))
        await eventually(lambda: asyncio.sleep(0, journal.position() > position), "a queued record")
        taking = asyncio.create_task(api(http, "POST", "/v1/admin/snapshots"))
        await asyncio.wait([taking], timeout=1.0)  # it may wait for the journal; the kill comes either way
        crash_image(server, tmp_path / "crash")
        held.open.set()
        await slow
        await queued
        assert (await taking)["journalPosition"] > position
    async with running(inproc_settings(tmp_path, tmp_path / "crash")) as (_, http):
        assert (await api(http, "GET", f"/v1/sends/{sent['id']}"))["id"] == sent["id"]
        assert (await api(http, "GET", "/v1/recipients/u1"))["pushTokens"] == ["t"]


async def test_a_retry_after_a_crash_never_finds_a_key_pointing_at_no_send(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Regression (d95e218): a snapshot taken while a send's start command still waited in its shard's
    mailbox kept its idempotency key; after a crash before the send was journaled, every retry answered 404."""
    held_back: list[tuple[Any, int, Any, int]] = []
    submit = Router.submit

    def slow_start(self: Any, i: int, command: Any, kind: int) -> None:
        if command.op == "start" and not held_back:  # the shard is busy: this start waits in its mailbox
            held_back.append((self, i, command, kind))
            return
        submit(self, i, command, kind)

    async with running(inproc_settings(tmp_path, tmp_path / "data")) as (server, http):
        await api(http, "PUT", "/v1/templates/seq-a", TEMPLATES["seq-a"](0))
        await api(http, "PUT", "/v1/recipients/u1", {"pushTokens": ["t"]})
        monkeypatch.setattr(Router, "submit", slow_start)
        first = asyncio.create_task(api(http, "POST", "/v1/sends", SEND))
        await eventually(lambda: asyncio.sleep(0, bool(held_back)), "the start command")
        await api(http, "POST", "/v1/admin/snapshots")
        crash_image(server, tmp_path / "crash")  # the server dies before the shard gets to the send
        monkeypatch.undo()
        submit(*held_back[0])
        await first
    async with running(inproc_settings(tmp_path, tmp_path / "crash")) as (_, http):
        async with http.post("/v1/sends", json=SEND) as r:  # the client never got an answer: it retries
            assert r.status == 202, await r.text()
