"""Recovery is the records, applied: replaying a live run's journal into an
empty engine gives the state the live engine ended with: every send's view,
every inbox, every recipient and every counter. Driven by hypothesis over
sends (quiet hours, throttles and engagement orders among them), signals in
any order, cancels, re-sent recipients and clock moves."""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cascade.durability.recovery import recover
from cascade.engine import AlreadyFinished, Engine, EngineConfig, ManualClock, MemoryProvider, NotFound
from cascade.storage import MemoryJournal

T0 = 1_800_000_000.0
TEMPLATES = {
    "chain": {"channels": [
        {"channel": "inapp", "stopCondition": "viewed", "waitMinutes": 10, "content": {"body": "hi {{n}}"}},
        {"channel": "push", "stopCondition": "clicked", "waitMinutes": 60, "content": {}},
        {"channel": "sms", "content": {}}], "config": {"sequenceEnabled": True}},
    "pair": {"channels": [
        {"channel": "email", "stopCondition": "delivered", "waitMinutes": 5, "content": {}},
        {"channel": "push", "content": {}}], "config": {"sequenceEnabled": True}},
    "all": {"channels": [{"channel": "inapp"}, {"channel": "email"}], "config": {"sequenceEnabled": False}},
    # T0 is 08:00 UTC: inside these quiet hours for UTC recipients, not for Kolkata (13:30)
    "night": {"channels": [
        {"channel": "push", "stopCondition": "clicked", "waitMinutes": 5, "content": {}},
        {"channel": "email", "content": {}}],
        "config": {"sequenceEnabled": True, "quietHours": {"start": "07:00", "end": "08:30"}}},
    "capped": {"channels": [{"channel": "inapp"}, {"channel": "sms"}],
               "config": {"sequenceEnabled": False, "throttle": {"limit": 1, "windowMinutes": 10},
                          "quietHours": {"start": "07:59", "end": "08:02", "channels": ["sms"]}}},
    "learned": {"channels": [
        {"channel": "inapp", "stopCondition": "viewed", "waitMinutes": 5, "content": {}},
        {"channel": "push", "stopCondition": "clicked", "waitMinutes": 10, "content": {}},
        {"channel": "email", "stopCondition": "delivered", "waitMinutes": 5, "content": {}}],
        "config": {"sequenceEnabled": True, "order": "engagement"}},
}
RECIPIENTS = [("full", {"email": "f@x.io", "phone": "+15550100", "pushTokens": ["p"], "timezone": "Asia/Kolkata"}),
              ("nopush", {"email": "n@x.io"}), ("quiet", {"pushTokens": ["q"], "preferences": {"sms": False}})]
SIGNALS = ("delivered", "viewed", "clicked", "failed")

op = st.one_of(
    st.tuples(st.just("send"), st.sampled_from(sorted(TEMPLATES)), st.sampled_from([r for r, _ in RECIPIENTS]),
              st.integers(0, 3)),
    st.tuples(st.just("signal"), st.integers(0, 30), st.integers(1, 3), st.sampled_from(SIGNALS)),
    st.tuples(st.just("cancel"), st.integers(0, 30)),
    st.tuples(st.just("inbox"), st.sampled_from([r for r, _ in RECIPIENTS])),
    st.tuples(st.just("recipient"), st.sampled_from([r for r, _ in RECIPIENTS]), st.booleans()),
    st.tuples(st.just("advance"), st.sampled_from([1, 60, 299, 300, 601, 3600])),
)


def engine_on(journal: MemoryJournal, failing: bool = False) -> Engine:
    providers = {c: MemoryProvider(c) for c in ("push", "email", "sms")}
    if failing:
        providers["email"].fail()  # refuses every message: rule 5 paths in the journal too
    return Engine(ManualClock(T0), providers, EngineConfig(shards=3, gc_freeze_interval_s=0), journal=journal)


def state(e: Engine, ids: list[str]) -> dict[str, Any]:
    sends = {sid: e.get_send(sid).wait() for sid in ids}
    inboxes = {rid: e.inbox(rid, 200).wait() for rid, _ in RECIPIENTS}
    recipients = {}
    for rid, _ in RECIPIENTS:
        try:
            recipients[rid] = e.get_recipient(rid).wait()
        except NotFound:
            recipients[rid] = None
    return {"sends": sends, "inboxes": inboxes, "recipients": recipients, "totals": e.totals().wait()}


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=st.lists(op, max_size=40), failing=st.booleans())
def test_replaying_the_journal_gives_the_live_state(ops: list[tuple[Any, ...]], failing: bool) -> None:
    storage: dict[int, bytearray] = {}
    live = engine_on(MemoryJournal(storage), failing).start()
    ids: list[str] = []
    try:
        for name, body in TEMPLATES.items():
            live.put_template(name, body).wait()
        for kind, *args in ops:
            if kind == "send":
                template, rid, n = args
                ids.append(live.send(template, {"id": rid, **dict(RECIPIENTS)[rid]}, {"n": n})[0].wait()["id"])
            elif kind == "signal" and ids:
                n, step, signal = args
                live.signals([(f"{ids[n % len(ids)]}.{step}", None, None, signal, None)]).wait()
            elif kind == "cancel" and ids:
                try:
                    live.cancel_send(ids[args[0] % len(ids)]).wait()
                except AlreadyFinished:
                    pass
            elif kind == "inbox":
                live.inbox(args[0], 5).wait()  # listing marks delivered: a signal too
            elif kind == "recipient":
                rid, opt_out = args
                live.put_recipient(rid, {**dict(RECIPIENTS)[rid], "preferences": {"push": not opt_out}}).wait()
            elif kind == "advance":
                live.advance(args[0])
        state(live, ids)  # reading inboxes marks their messages delivered: journaled too
        expected = state(live, ids)
    finally:
        live.stop()
    replayed = engine_on(MemoryJournal(storage), failing)
    recover(replayed, "/nonexistent-snapshots", replayed.journal)
    replayed.start()
    try:
        assert state(replayed, ids) == expected
    finally:
        replayed.stop()
