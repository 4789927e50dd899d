"""The engine's parts a user leans on indirectly: the timing wheel, the
clocks, template validation, content rendering, idempotency keys, shard
restarts and back-pressure."""

from __future__ import annotations

import time
from typing import Any

import pytest

from cascade.domain.render import compile_content
from cascade.domain.templates import validate_template
from cascade.engine import (
    Conflict,
    Engine,
    EngineConfig,
    ManualClock,
    MemoryProvider,
    NotFound,
    Overloaded,
    ScaledClock,
    TemplateInvalid,
)
from cascade.engine.background import Background
from cascade.engine.timers import TimerWheel

PAIR = {"channels": [{"channel": "inapp", "stopCondition": "viewed", "waitMinutes": 5, "content": {"t": "{{a.b}}"}},
                     {"channel": "email", "content": {}}], "config": {"sequenceEnabled": True}}


def test_the_wheel_hands_back_due_items_in_deadline_order_and_keeps_the_rest() -> None:
    wheel: TimerWheel[str] = TimerWheel()
    for item, deadline in [("c", 103.5), ("a", 100.2), ("b", 100.7), ("late", 500.0), ("d", 103.1)]:
        wheel.schedule(item, deadline)
    assert wheel.pop_due(103.2) == ["a", "b", "d"]
    assert wheel.next_deadline() == 103.5 and len(wheel) == 2
    assert wheel.pop_due(1000) == ["c", "late"] and len(wheel) == 0


def test_a_cancelled_timer_never_fires_and_frees_its_bucket() -> None:
    wheel: TimerWheel[int] = TimerWheel()
    for i in range(1000):
        wheel.schedule(i, 200.0 + i)
    for i in range(1000):
        assert wheel.cancel(i, 200.0 + i)
    assert len(wheel) == 0 and wheel.buckets == 0
    assert not wheel.cancel(5, 205.0)
    assert wheel.pop_due(10_000) == []


def test_the_manual_clock_refuses_to_go_backwards() -> None:
    clock = ManualClock(10.0)
    assert clock.advance(5) == 15.0
    with pytest.raises(ValueError, match="backwards"):
        clock.advance(-1)
    with pytest.raises(ValueError, match="backwards"):
        clock.set(14.0)


def test_the_scaled_clock_runs_rate_times_faster_than_real_time() -> None:
    clock = ScaledClock(rate=1000.0, start=0.0)
    began = time.monotonic()
    while time.monotonic() - began < 0.02:
        pass
    elapsed_real = time.monotonic() - began
    assert clock.now() >= elapsed_real * 1000 * 0.9


@pytest.mark.parametrize("body, path, words", [
    ({"channels": [{"channel": "fax"}]}, "$.channels[0].channel", "inapp, push, email, sms"),
    ({"channels": [{"channel": "push", "stopCondition": "viewed", "waitMinutes": 5}, {"channel": "email"}],
      "config": {"sequenceEnabled": True}}, "$.channels[0].stopCondition", "push emits no viewed"),
    ({"channels": [{"channel": "push"}, {"channel": "push"}]}, "$.channels[1].channel", "twice"),
    ({"channels": [{"channel": "push"}], "config": {"sequenceEnabled": True}}, "$.channels", "at least two"),
    ({"channels": [{"channel": "push", "waitMinutes": 5}, {"channel": "email"}]}, "$.channels[0].waitMinutes",
     "not allowed"),
    ({"channels": [{"channel": "inapp"}, {"channel": "email", "stopCondition": "clicked", "waitMinutes": 5}],
      "config": {"sequenceEnabled": True}}, "$.channels[0].stopCondition", "required"),
    ({"channels": []}, "$.channels", "1 to 4"),
])
def test_template_validation_names_the_path_and_the_allowed_values(body: Any, path: str, words: str) -> None:
    problems = dict(validate_template("t", body))
    assert path in problems and words in problems[path], problems


def test_template_ids_follow_the_documented_pattern() -> None:
    assert validate_template("order-shipped_2", PAIR) == []
    assert validate_template("Order", PAIR)[0][0] == "$.id"
    assert validate_template("-x", PAIR)[0][0] == "$.id"


def test_placeholders_render_from_data_and_the_recipient_and_missing_ones_render_empty() -> None:
    content = compile_content({"title": "Hi {{recipient.id}}", "body": "Order {{ order.id }}: {{missing.path}}.",
                               "n": ["{{count}} items"], "static": 3})
    out = content.render({"order": {"id": "A1"}, "count": 2}, {"id": "u-42"})
    assert out == {"title": "Hi u-42", "body": "Order A1: .", "n": ["2 items"], "static": 3}


@pytest.fixture
def engine() -> Any:
    e = Engine(ManualClock(0.0), {c: MemoryProvider(c) for c in ("push", "email", "sms")},
               EngineConfig(shards=2, gc_freeze_interval_s=0)).start()
    e.put_template("pair", PAIR).wait()
    yield e
    e.stop()


def test_replacing_a_template_makes_a_new_version_and_active_sends_keep_theirs(engine: Engine) -> None:
    sid = engine.send("pair", "u")[0].wait()["id"]
    tv, created = engine.put_template("pair", {**PAIR, "name": "v2"}).wait()
    assert (tv.version, created) == (2, False)
    assert engine.get_send(sid).wait()["templateVersion"] == 1
    assert engine.send("pair", "u")[0].wait()["templateVersion"] == 2


def test_a_deleted_template_refuses_new_sends_while_active_ones_finish(engine: Engine) -> None:
    sid = engine.send("pair", "u")[0].wait()["id"]
    engine.delete_template("pair").wait()
    with pytest.raises(NotFound):
        engine.send("pair", "u")
    engine.advance(300)
    assert engine.get_send(sid).wait()["status"] == "completed" or engine.get_send(sid).wait()["status"] == "failed"


def test_an_idempotency_key_answers_the_same_send_and_refuses_another_body(engine: Engine) -> None:
    first, created = engine.send("pair", "u", {"a": 1}, idempotency_key="k")
    again, created_again = engine.send("pair", "u", {"a": 1}, idempotency_key="k")
    assert (created, created_again) == (True, False)
    assert again.wait()["id"] == first.wait()["id"]
    with pytest.raises(Conflict):
        engine.send("pair", "u", {"a": 2}, idempotency_key="k")


def test_a_crashed_shard_is_restarted_over_its_state(engine: Engine) -> None:
    sid = engine.send("pair", "u")[0].wait()["id"]
    shard = engine.shard_of_recipient("u")
    engine.router.kill(shard)  # the actor dies; its sends must not
    assert engine.get_send(sid).wait()["status"] == "active"
    assert engine.router.alive(shard)


def test_a_full_shard_queue_is_refused_with_overloaded_instead_of_growing() -> None:
    e = Engine(ManualClock(0.0), config=EngineConfig(shards=1, max_pending_per_shard=0, gc_freeze_interval_s=0)).start()
    try:
        e.put_template("pair", PAIR).wait()
        with pytest.raises(Overloaded) as err:
            e.send("pair", "u")
        assert err.value.retry_after_s >= 1
    finally:
        e.stop()


def test_unanswerable_data_is_refused_naming_the_field(engine: Engine) -> None:
    with pytest.raises(TemplateInvalid.__mro__[1]) as err:  # InvalidInput
        engine.send("pair", "u", {"big": 2**80})
    assert err.value.details[0][0] == "$.data"


def test_a_scaled_clock_runs_rate_times_faster_than_the_monotonic_clock_it_is_given() -> None:
    real = [100.0]
    clock = ScaledClock(60.0, start=1_000.0, monotonic=lambda: real[0])
    real[0] += 5.0  # five real seconds
    assert clock.now() == 1_000.0 + 300.0
    clock.restore(5_000.0)
    real[0] += 1.0
    assert clock.now() == 5_060.0


def test_background_work_yields_when_the_process_is_over_its_cpu_share() -> None:
    wall, cpu = [0.0], [0.0]
    bg = Background(monotonic=lambda: wall[0], cpu_time=lambda: cpu[0])
    assert not bg.cpu_over()
    wall[0] += 0.05
    cpu[0] += 0.01  # 20% busy
    assert not bg.cpu_over()
    wall[0] += 0.05
    cpu[0] += 0.09  # 100% over the last 0.1 s
    assert bg.cpu_over()
