"""The sequence rules of the contract, one test each, on the pure rules
alone: no shard, no thread, no clock. Each walks messages through the
decisions (`domain/sequence.py`), applies the records they emit as the shard
would (`domain/evolve.py`), and checks the send's state and the records."""

from __future__ import annotations

from typing import Any, Callable

import pytest

from cascade.domain import send as st
from cascade.domain import sequence as rules
from cascade.domain.channels import CLICKED, DELIVERED, FAILED, VIEWED
from cascade.domain.errors import TemplateInvalid
from cascade.domain.evolve import evolve
from cascade.domain.recipients import Recipient
from cascade.domain.records import SendCancelled, SendFinished, SendStopped, SignalApplied, StepFired
from cascade.domain.templates import TemplateRegistry
from cascade.engine.counters import CounterBook

T0 = 1_000.0
CHAIN = {"channels": [
    {"channel": "inapp", "stopCondition": "viewed", "waitMinutes": 10, "content": {"body": "Hi {{recipient.id}}"}},
    {"channel": "push", "stopCondition": "delivered", "waitMinutes": 60, "content": {}},
    {"channel": "sms", "content": {"body": "Last call {{code}}"}},
], "config": {"sequenceEnabled": True}}
FULL = dict(email="f@example.com", phone="+15550100", push_tokens=("p1",))
FINISHING = (SendStopped, SendCancelled, SendFinished)


def make(body: dict[str, Any] = CHAIN, **recipient: Any) -> st.Send:
    tpl, _ = TemplateRegistry().put("t", body, T0)
    book = CounterBook()
    rcpt = Recipient("u-1", **(recipient or FULL))
    return st.Send(1, tpl, rcpt, None, T0, book.counters_of(("t:t",), tpl))


def decide(send: st.Send, rule: Callable[..., Any], *args: Any) -> tuple[Any, list[Any]]:
    """Run one decision, applying each record it emits at once (as a shard
    does); its answer and the records."""
    records: list[Any] = []

    def emit(rec: Any) -> None:
        evolve(send, rec)
        records.append(rec)

    return rule(send, *args, emit), records


def start(send: st.Send, now: float) -> list[Any]:
    return decide(send, rules.start, now)[1]


def timer_due(send: st.Send, now: float) -> list[Any]:
    return decide(send, rules.timer_due, now)[1]


def delivery_result(send: st.Send, i: int, ok: bool, reason: str | None, now: float) -> list[Any]:
    return decide(send, rules.delivery_result, i, ok, reason, now)[1]


def signal(send: st.Send, i: int, kind: int, at: float, now: float) -> tuple[int, list[Any]]:
    return decide(send, rules.signal, i, kind, at, now)


def signal_records(send: st.Send, i: int, kind: int, at: float, now: float) -> list[Any]:
    """The records of an accepted signal beyond its own `SignalApplied`."""
    outcome, records = signal(send, i, kind, at, now)
    assert outcome == rules.SignalOutcome.ACCEPTED
    assert records[0] == SignalApplied(send.key, i, kind, at, now)
    return records[1:]


def statuses(send: st.Send) -> list[str]:
    return [st.STEP_STATUS[send.step_status(i)] for i in range(len(send.tpl.steps))]


def delivers(records: list[Any]) -> list[int]:
    """Step numbers handed to their channel."""
    return [r.step + 1 for r in records if type(r) is StepFired]


def finishes(records: list[Any]) -> bool:
    return any(type(r) in FINISHING for r in records)


def answer_all(send: st.Send, records: list[Any], now: float, ok: bool = True) -> list[Any]:
    """Play the channels accepting (or refusing) every delivery asked for."""
    out = list(records)
    pending = delivers(records)
    while pending:
        step = pending.pop(0)
        more = delivery_result(send, step - 1, ok, None if ok else "retries_exhausted", now)
        out += more
        pending += delivers(more)
    return out


def started(send: st.Send) -> st.Send:
    answer_all(send, start(send, T0), T0)
    return send


def row(send: st.Send, step: int) -> dict[str, int]:
    return dict(zip(st.STEP_COLUMNS, send.counters[0].steps[step - 1]))


def test_step_one_fires_at_once_and_waits_its_window() -> None:
    send = make()
    records = start(send, T0)
    assert records == [StepFired(1, 0, T0)]
    assert send.deadline == T0 + 600
    assert statuses(send) == ["waiting", "pending", "pending"]


def test_rule1_clicked_on_step_one_stops_chain_whatever_its_condition() -> None:
    send = started(make())
    assert signal_records(send, 0, CLICKED, T0 + 5, T0 + 5) == [SendStopped(1, 0, CLICKED, T0 + 5)]
    assert send.deadline is None
    assert st.SEND_STATUS[send.status] == "stopped"
    assert send.get("stoppedBy") == 4 * 0 + CLICKED


def test_rule1_a_weaker_signal_than_the_condition_does_not_stop() -> None:
    send = started(make())
    assert signal_records(send, 0, DELIVERED, T0 + 5, T0 + 5) == []
    assert send.status == st.ACTIVE and statuses(send)[0] == "waiting"


def test_rule2_the_condition_met_in_the_window_cancels_the_timer_and_stops() -> None:
    send = started(make())
    assert signal_records(send, 0, VIEWED, T0 + 120, T0 + 120) == [SendStopped(1, 0, VIEWED, T0 + 120)]
    assert send.deadline is None
    assert statuses(send) == ["stopped", "pending", "pending"]
    assert row(send, 1)["stopped"] == 1


def test_rule3_a_late_signal_on_an_earlier_step_stops_the_rest() -> None:
    send = started(make())
    answer_all(send, timer_due(send, T0 + 600), T0 + 600)
    assert statuses(send) == ["fired", "waiting", "pending"] and send.deadline == T0 + 600 + 3600
    assert signal_records(send, 0, VIEWED, T0 + 700, T0 + 700) == [SendStopped(1, 0, VIEWED, T0 + 700)]
    assert send.deadline is None
    assert statuses(send) == ["stopped", "cancelled", "pending"]
    assert st.SEND_STATUS[send.status] == "stopped"


def test_rule3_a_late_signal_below_its_steps_condition_changes_nothing() -> None:
    send = started(make())
    answer_all(send, timer_due(send, T0 + 600), T0 + 600)
    assert signal_records(send, 0, DELIVERED, T0 + 700, T0 + 700) == []
    assert statuses(send) == ["fired", "waiting", "pending"]


def test_rule4_a_window_ending_without_its_condition_fires_the_next_step_at_once() -> None:
    send = started(make())
    assert timer_due(send, T0 + 599) == []  # not yet due: nothing happens
    records = timer_due(send, T0 + 600)
    assert delivers(records) == [2]
    assert row(send, 1)["escalated"] == 1 and row(send, 2)["requested"] == 1
    assert send.fired_at(1) == T0 + 600


@pytest.mark.parametrize("recipient, reason", [
    (dict(email="e@x.io", phone="+15550101"), "no_address"),
    (dict(FULL, preferences={"push": False}), "opted_out"),
])
def test_rule5_a_step_that_cannot_reach_the_recipient_is_skipped_without_waiting(
        recipient: dict[str, Any], reason: str) -> None:
    send = started(make(**recipient))
    records = answer_all(send, timer_due(send, T0 + 600), T0 + 600)
    assert delivers(records) == [3]
    assert statuses(send) == ["fired", "skipped", "fired"]
    assert send.get(st.REASON_KEY + 1) == reason
    assert row(send, 2)["skipped"] == 1


def test_rule5_a_provider_refusal_escalates_without_waiting() -> None:
    send = started(make())
    records = timer_due(send, T0 + 600)  # push fires ...
    more = delivery_result(send, 1, False, "retries_exhausted", T0 + 601)  # ... and is refused
    assert delivers(more) == [3] and send.deadline is None  # sms is terminal: nothing waits
    assert delivers(records) == [2]
    assert statuses(send)[1] == "failed" and send.get(st.REASON_KEY + 1) == "retries_exhausted"


def test_rule5_a_failed_signal_while_waiting_escalates_at_once() -> None:
    send = started(make())
    records = signal_records(send, 0, FAILED, T0 + 30, T0 + 30)
    assert delivers(records) == [2]
    assert statuses(send)[:2] == ["failed", "waiting"]
    assert row(send, 1)["failed"] == 1


def test_rule6_firing_the_terminal_step_completes_the_send() -> None:
    send = started(make())
    answer_all(send, timer_due(send, T0 + 600), T0 + 600)
    records = answer_all(send, timer_due(send, T0 + 4200), T0 + 4200)
    assert records[-1] == SendFinished(1, st.COMPLETED, T0 + 4200)
    assert st.SEND_STATUS[send.status] == "completed" and statuses(send) == ["fired", "fired", "fired"]


def test_rule6_a_send_that_reached_no_channel_ends_failed() -> None:
    body = {"channels": [{"channel": "push", "stopCondition": "delivered", "waitMinutes": 5, "content": {}},
                         {"channel": "email", "content": {}}], "config": {"sequenceEnabled": True}}
    send = make(body, email=None)
    records = start(send, T0)
    assert delivers(records) == [] and records[-1] == SendFinished(1, st.FAILED_SEND, T0)
    assert st.SEND_STATUS[send.status] == "failed" and statuses(send) == ["skipped", "skipped"]


def test_rule6_the_terminal_step_refused_after_nothing_else_was_delivered_ends_failed() -> None:
    body = {"channels": [{"channel": "push", "stopCondition": "delivered", "waitMinutes": 5, "content": {}},
                         {"channel": "email", "content": {}}], "config": {"sequenceEnabled": True}}
    send = make(body, **FULL)
    answer_all(send, start(send, T0), T0, ok=False)
    assert st.SEND_STATUS[send.status] == "failed" and statuses(send) == ["failed", "failed"]


def test_rule7_signals_on_a_finished_send_still_count() -> None:
    send = started(make())
    signal(send, 0, VIEWED, T0 + 1, T0 + 1)
    assert signal_records(send, 0, CLICKED, T0 + 9000, T0 + 9000) == []
    assert row(send, 1)["clicked"] == 1 and st.SEND_STATUS[send.status] == "stopped"


def test_rule8_a_repeated_signal_counts_once_and_changes_nothing() -> None:
    send = started(make())
    signal(send, 0, DELIVERED, T0 + 1, T0 + 1)
    before = (send.steps, send.sig, send.status)
    outcome, records = signal(send, 0, DELIVERED, T0 + 2, T0 + 2)
    assert outcome == rules.SignalOutcome.DUPLICATE and records == []
    assert (send.steps, send.sig, send.status) == before
    assert row(send, 1)["delivered"] == 1


@pytest.mark.parametrize("minutes", [0, 1, 15, 45, 120, 1441, -5, 10.5, True])
def test_rule9_a_wait_window_outside_the_allowed_values_is_refused_naming_them(minutes: Any) -> None:
    body = {"channels": [{"channel": "inapp", "stopCondition": "viewed", "waitMinutes": minutes},
                         {"channel": "push"}], "config": {"sequenceEnabled": True}}
    with pytest.raises(TemplateInvalid) as err:
        TemplateRegistry().put("t", body, T0)
    (path, message), = err.value.details
    assert path == "$.channels[0].waitMinutes"
    assert "5, 10, 30, 60, 240, 1440" in message


def test_rule10_deadlines_are_absolute_and_a_late_firing_starts_the_next_window_then() -> None:
    send = started(make())
    assert send.deadline == T0 + 600  # an absolute time, not a countdown
    records = timer_due(send, T0 + 5000)  # the server was down past the deadline
    assert delivers(records) == [2] and send.deadline == T0 + 5000 + 3600


def test_cancel_stops_what_is_pending_and_refuses_a_finished_send() -> None:
    send = started(make())
    ok, records = decide(send, rules.cancel, T0 + 1)
    assert ok and records == [SendCancelled(1, T0 + 1)] and send.deadline is None
    assert statuses(send) == ["cancelled", "pending", "pending"]
    assert decide(send, rules.cancel, T0 + 2) == (False, [])


def test_without_a_sequence_every_channel_fires_at_once_and_signals_stop_nothing() -> None:
    body = {"channels": [{"channel": "inapp"}, {"channel": "email"}], "config": {"sequenceEnabled": False}}
    send = make(body, **FULL)
    records = start(send, T0)
    assert delivers(records) == [1, 2] and send.deadline is None
    answer_all(send, records, T0)
    assert st.SEND_STATUS[send.status] == "completed"
    assert signal_records(send, 0, CLICKED, T0 + 1, T0 + 1) == []


def test_a_signal_on_a_step_that_never_fired_is_refused_as_unknown() -> None:
    send = started(make())
    assert signal(send, 1, DELIVERED, T0, T0) == (rules.SignalOutcome.UNKNOWN_MESSAGE, [])  # push not fired yet
    assert signal(send, 7, DELIVERED, T0, T0) == (rules.SignalOutcome.UNKNOWN_MESSAGE, [])
