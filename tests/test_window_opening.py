"""A step's window opens when its channel has the message: the time the
server spends getting it there (a delivery queue, a slow fsync, a slow
provider) is not taken from the recipient, and a window never closes before
its message was accepted: the provider's answer, accepted or refused, comes
in any case (its retries and timeouts bound it)."""

from __future__ import annotations

from typing import Any, Iterator

import pytest

from cascade.delivery.providers.base import DeliveryOutcome, OutgoingMessage
from cascade.domain.timefmt import parse_iso
from cascade.engine import Engine, EngineConfig, ManualClock, MemoryProvider

T0 = 1_800_000_000.0
CHAIN = {"channels": [
    {"channel": "push", "stopCondition": "clicked", "waitMinutes": 5, "content": {"body": "hi"}},
    {"channel": "sms", "content": {"body": "still there?"}},
], "config": {"sequenceEnabled": True}}


class Held:
    """An asynchronous provider's dispatcher that answers only when told to."""

    def __init__(self) -> None:
        self.jobs: list[tuple[str, OutgoingMessage, Any]] = []

    def __call__(self, jobs: list[tuple[str, OutgoingMessage, Any]], on_results: Any) -> None:
        self.jobs += jobs


class _Async:
    synchronous = False


@pytest.fixture
def held() -> Held:
    return Held()


@pytest.fixture
def engine(held: Held) -> Iterator[Engine]:
    e = Engine(ManualClock(T0), {"push": _Async(), "sms": MemoryProvider("sms")},  # type: ignore[dict-item]
               EngineConfig(shards=1, gc_freeze_interval_s=0, answer_wait_s=0), submit_jobs=held).start()
    e.put_template("chain", CHAIN).wait()
    e.put_recipient("u", {"pushTokens": ["t"], "phone": "+15550100"}).wait()
    yield e
    e.stop()


def accept(engine: Engine, held: Held) -> None:
    """The provider accepts every message it holds, now."""
    engine.delivery_results([(token, DeliveryOutcome(True)) for _, _, token in held.jobs])
    held.jobs.clear()
    engine.stats().wait()  # the answers are applied


def steps(engine: Engine, sid: str) -> list[dict[str, Any]]:
    view: dict[str, Any] = engine.get_send(sid).wait()
    return view["steps"]  # type: ignore[no-any-return]


def test_a_window_is_counted_from_when_the_channel_accepted_the_message(engine: Engine, held: Held) -> None:
    sid = engine.send("chain", "u")[0].wait()["id"]
    engine.advance(200)  # the message took 200 s to reach the provider
    accept(engine, held)
    first = steps(engine, sid)[0]
    assert parse_iso(first["firedAt"]) == T0
    assert parse_iso(first["deadline"]) == T0 + 200 + 300  # five minutes from acceptance, not from firing
    engine.advance(250)  # 450 s after firing: past firedAt + 5 min, inside the window
    assert [s["status"] for s in steps(engine, sid)] == ["waiting", "pending"]
    engine.advance(51)
    assert [s["status"] for s in steps(engine, sid)] == ["fired", "fired"]
    assert parse_iso(steps(engine, sid)[0]["deadline"]) == T0 + 500  # the view keeps the window as it was


def test_a_window_does_not_close_before_its_channel_has_the_message(engine: Engine, held: Held) -> None:
    """Rule 11: a message still waiting in the server's delivery queue (or at a provider
    that has not answered) has not reached the recipient; ending its window then would be
    the server's own backlog escalating. Its answer opens the window."""
    sid = engine.send("chain", "u")[0].wait()["id"]
    engine.advance(400)  # past firedAt + 5 min, and the provider has still not answered
    assert [s["status"] for s in steps(engine, sid)] == ["waiting", "pending"]
    accept(engine, held)
    assert parse_iso(steps(engine, sid)[0]["deadline"]) == T0 + 400 + 300
    engine.advance(299)
    assert [s["status"] for s in steps(engine, sid)] == ["waiting", "pending"]
    engine.advance(2)
    assert [s["status"] for s in steps(engine, sid)] == ["fired", "fired"]


def test_a_refusal_after_the_deadline_fires_the_next_step_at_once(engine: Engine, held: Held) -> None:
    sid = engine.send("chain", "u")[0].wait()["id"]
    engine.advance(400)
    engine.delivery_results([(token, DeliveryOutcome(False, "rejected")) for _, _, token in held.jobs])
    held.jobs.clear()
    engine.stats().wait()
    assert [s["status"] for s in steps(engine, sid)][1] == "fired"  # rule 5: no window to wait


def test_the_deadline_a_view_shows_is_the_window_that_was(engine: Engine, held: Held) -> None:
    sid = engine.send("chain", "u")[0].wait()["id"]
    engine.advance(0.6)  # accepted 0.6 s after firing
    accept(engine, held)
    waiting = parse_iso(steps(engine, sid)[0]["deadline"])
    assert waiting == T0 + 300.6
    engine.advance(300)
    assert [s["status"] for s in steps(engine, sid)] == ["fired", "fired"]
    assert parse_iso(steps(engine, sid)[0]["deadline"]) == waiting  # not firedAt + 5 min
