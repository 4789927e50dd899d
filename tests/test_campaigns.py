"""Campaigns in the engine: one template version to many recipients, now or
at a time, each recipient's sequence running on its own.

Under the manual clock `engine.advance(...)` starts every campaign that falls
due and lets fan-outs finish before time moves on, so `advance(0)` is how a
test (or a user's integration test) waits for a campaign to have started.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Iterator

import msgpack
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from cascade.campaigns import Campaigns, attach_campaigns
from cascade.campaigns.book import Campaign, CampaignBook
from cascade.campaigns.rows import MAX_REPORTED_ERRORS, RowsWriter, Upload
from cascade.domain.timefmt import iso
from cascade.engine import AlreadyFinished, Engine, EngineConfig, InvalidInput, ManualClock, MemoryProvider, NotFound
from cascade.http.metrics import HttpMetrics

T0 = 1_800_000_000.0
SHIPPED = {"channels": [
    {"channel": "inapp", "stopCondition": "viewed", "waitMinutes": 30,
     "content": {"body": "Order {{order.id}} is on its way, {{name}}"}},
    {"channel": "push", "content": {"body": "Order {{order.id}}"}},
], "config": {"sequenceEnabled": True}}
Row = tuple[str, "dict[str, Any] | None", "dict[str, Any] | None"]


@pytest.fixture
def providers() -> dict[str, MemoryProvider]:
    return {c: MemoryProvider(c) for c in ("push", "email", "sms")}


@pytest.fixture
def make_engine(providers: dict[str, MemoryProvider]) -> Iterator[Callable[..., Engine]]:
    made: list[Engine] = []

    def make(campaign_dir: str | None = None, campaign_max_sends_per_s: float = 0.0) -> Engine:
        engine = Engine(ManualClock(T0), providers, EngineConfig(shards=3, gc_freeze_interval_s=0))
        attach_campaigns(engine, campaign_dir, campaign_max_sends_per_s)
        engine.start()
        engine.put_template("shipped", SHIPPED).wait()
        made.append(engine)
        return engine

    yield make
    for engine in made:
        engine.stop()


@pytest.fixture
def engine(make_engine: Callable[..., Engine]) -> Engine:
    return make_engine()


def book_of(engine: Engine) -> CampaignBook:
    """The campaign book attached to `engine`."""
    return next(e.book for e in engine.extensions if isinstance(e, Campaigns))


def create(engine: Engine, rows: list[Row | str], template: str = "shipped", scheduled_at: float | None = None,
           data: dict[str, Any] | None = None, name: str | None = None) -> Campaign:
    upload = book_of(engine).new_upload()
    for n, row in enumerate(rows, 1):
        rid, fields, row_data = (row, None, None) if isinstance(row, str) else row
        upload.add(n, rid, fields, msgpack.packb(row_data) if row_data else None)
    ref = upload.finish()
    packed = msgpack.packb(data) if data else None
    campaign: Campaign = book_of(engine).create(upload, ref, template, scheduled_at, name, packed).wait()
    return campaign


def view(engine: Engine, c: Campaign) -> dict[str, Any]:
    totals = engine.totals([c.group]).wait()
    return book_of(engine).view(c, totals.get(c.group))


def sends_of(engine: Engine, c: Campaign) -> list[dict[str, Any]]:
    """The campaign's send views, every page of the listing."""
    views: list[dict[str, Any]] = []
    cursor = None
    while True:
        page = engine.list_sends(campaign=c.id, limit=200, before=cursor).wait()
        views += page["sends"]
        cursor = page["next"]
        if cursor is None:
            return views


def inbox_message(engine: Engine, rid: str) -> dict[str, Any]:
    page = engine.inbox(rid).wait()
    assert len(page["messages"]) == 1, page
    return page["messages"][0]  # type: ignore[no-any-return]


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    """For progress of the fan-out thread, which no clock or event reports."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.002)


def step(metrics: dict[str, Any], number: int) -> dict[str, Any]:
    return next(s for s in metrics["steps"] if s["step"] == number)  # type: ignore[no-any-return]


# -- fan-out ---------------------------------------------------------------------------

def test_every_recipient_gets_one_send_and_the_campaign_completes(engine: Engine) -> None:
    c = create(engine, [f"u{i}" for i in range(300)], name="launch")
    assert c.status == "running" and c.n_rows == 300
    engine.advance(0)
    v = view(engine, c)
    assert v["status"] == "completed" and v["recipients"] == 300 and v["sendsStarted"] == 300
    assert v["name"] == "launch" and v["finishedAt"] is not None
    assert sorted(Counter(s["recipient"] for s in sends_of(engine, c)).values()) == [1] * 300
    assert v["metrics"]["sends"] == {"started": 300, "active": 300, "stopped": 0, "completed": 0, "cancelled": 0,
                                     "failed": 0}


def test_each_recipients_chain_escalates_or_stops_independently(engine: Engine,
                                                                providers: dict[str, MemoryProvider]) -> None:
    rows: list[Row | str] = [(f"u{i}", {"pushTokens": [f"tok{i}"]}, {"order": {"id": f"A{i}"}}) for i in range(10)]
    c = create(engine, rows)
    engine.advance(0)
    for i in range(0, 10, 2):  # even recipients view their in-app message: their chain stops
        message = inbox_message(engine, f"u{i}")
        engine.inbox_signal(f"u{i}", message["messageId"], "viewed").wait()
    engine.advance(29 * 60)
    assert providers["push"].messages == []
    engine.advance(60)
    pushed = sorted(m.recipient["id"] for m in providers["push"].messages)
    assert pushed == [f"u{i}" for i in range(1, 10, 2)]
    assert sorted(m.content["body"] for m in providers["push"].messages) == [f"Order A{i}" for i in range(1, 10, 2)]
    m = view(engine, c)["metrics"]
    assert m["sends"]["stopped"] == 5 and m["sends"]["completed"] == 5 and m["sends"]["active"] == 0
    assert step(m, 1)["stopped"] == 5 and step(m, 1)["escalated"] == 5
    assert step(m, 2)["requested"] == 5


def test_row_data_and_addresses_reach_the_rendered_messages(engine: Engine,
                                                            providers: dict[str, MemoryProvider]) -> None:
    create(engine, [("ann", {"pushTokens": ["t-ann"], "email": "ann@example.com"},
                     {"order": {"id": "A1"}, "name": "Ann"})])
    engine.advance(0)
    assert inbox_message(engine, "ann")["content"]["body"] == "Order A1 is on its way, Ann"
    assert engine.get_recipient("ann").wait() == {"id": "ann", "email": "ann@example.com",
                                                  "pushTokens": ["t-ann"], "preferences": {}}
    engine.advance(1800)
    (message,) = providers["push"].messages
    assert message.recipient["pushTokens"] == ["t-ann"]
    assert message.content["body"] == "Order A1"


def test_the_campaigns_data_fills_rows_without_their_own(engine: Engine) -> None:
    create(engine, ["u1", ("u2", None, {"order": {"id": "own"}, "name": "Two"})],
           data={"order": {"id": "C9"}, "name": "all"})
    engine.advance(0)
    assert inbox_message(engine, "u1")["content"]["body"] == "Order C9 is on its way, all"
    assert inbox_message(engine, "u2")["content"]["body"] == "Order own is on its way, Two"


def test_a_campaign_send_names_its_campaign(engine: Engine) -> None:
    c = create(engine, ["u1"])
    engine.advance(0)
    send_id = inbox_message(engine, "u1")["sendId"]
    assert engine.get_send(send_id).wait()["campaign"] == c.id


def test_a_campaign_keeps_the_template_version_it_was_created_with(engine: Engine) -> None:
    c = create(engine, ["u1", "u2"], scheduled_at=T0 + 60)
    engine.put_template("shipped", {**SHIPPED, "name": "v2"}).wait()
    engine.advance(60)
    assert {s["templateVersion"] for s in sends_of(engine, c)} == {1}
    assert view(engine, c)["templateVersion"] == 1


def test_an_unknown_template_is_not_found(engine: Engine) -> None:
    with pytest.raises(NotFound):
        create(engine, ["u1"], template="nope")


def test_a_campaign_without_one_valid_recipient_is_invalid(engine: Engine) -> None:
    with pytest.raises(InvalidInput) as err:
        create(engine, ["bad id", ("u1", {"email": "not-an-email"}, None)])
    assert [d[0] for d in err.value.details] == ["row 1", "row 2"]


def test_the_fanout_honours_max_sends_per_s(make_engine: Callable[..., Engine]) -> None:
    engine = make_engine(campaign_max_sends_per_s=400)
    began = time.monotonic()
    c = create(engine, [f"u{i}" for i in range(100)])
    engine.advance(0)
    assert view(engine, c)["sendsStarted"] == 100
    assert time.monotonic() - began >= 0.2  # 100 rows at 400/s: 0.25 s less the first chunk


# -- scheduling ------------------------------------------------------------------------

def test_a_scheduled_campaign_waits_for_the_manual_clock(engine: Engine) -> None:
    c = create(engine, ["u1", "u2"], scheduled_at=T0 + 3600)
    assert c.status == "scheduled"
    engine.advance(1800)
    assert view(engine, c)["status"] == "scheduled" and view(engine, c)["sendsStarted"] == 0
    engine.advance(1800)
    assert view(engine, c)["status"] == "completed" and view(engine, c)["sendsStarted"] == 2


def test_sends_start_at_scheduled_at_even_when_the_clock_jumps_past_it(engine: Engine,
                                                                       providers: dict[str, MemoryProvider]) -> None:
    c = create(engine, [("u1", {"pushTokens": ["t"]}, None)], scheduled_at=T0 + 3600)
    engine.advance(6 * 3600)  # one jump: the campaign starts at +1 h, its window ends at +1.5 h
    (send,) = sends_of(engine, c)
    assert send["createdAt"] == iso(T0 + 3600)
    assert send["steps"][1]["firedAt"] == "2027-01-15T09:30:00.000Z"
    assert len(providers["push"].messages) == 1


def test_a_campaign_scheduled_in_the_past_starts_now(engine: Engine) -> None:
    c = create(engine, ["u1"], scheduled_at=T0 - 86400)
    assert c.status == "running"
    engine.advance(0)
    assert view(engine, c)["status"] == "completed"


# -- cancelling ------------------------------------------------------------------------

def test_cancelling_before_the_start_starts_nothing(engine: Engine) -> None:
    c = create(engine, ["u1", "u2"], scheduled_at=T0 + 60)
    book_of(engine).cancel(c.id).wait()
    engine.advance(3600)
    v = view(engine, c)
    assert v["status"] == "cancelled" and v["sendsStarted"] == 0 and sends_of(engine, c) == []
    with pytest.raises(AlreadyFinished):
        book_of(engine).cancel(c.id)


def test_cancelling_during_fanout_starts_nothing_more_and_cancels_what_started(
        make_engine: Callable[..., Engine]) -> None:
    engine = make_engine(campaign_max_sends_per_s=2000)
    other = create(engine, ["bystander"])
    c = create(engine, [f"u{i}" for i in range(2000)])
    wait_until(lambda: c.started >= 200)
    book_of(engine).cancel(c.id).wait()
    started = view(engine, c)["sendsStarted"]
    assert 200 <= started < 2000
    engine.advance(0)
    time.sleep(0.05)  # a chunk read before the cancel would have been submitted by now
    v = view(engine, c)
    assert v["status"] == "cancelled" and v["sendsStarted"] == started
    assert v["metrics"]["sends"]["cancelled"] == started and v["metrics"]["sends"]["active"] == 0
    assert all(s["status"] == "cancelled" for s in sends_of(engine, c))
    assert view(engine, other)["metrics"]["sends"]["active"] == 1  # other campaigns are left alone


def test_a_completed_campaign_can_still_be_cancelled_to_stop_its_active_sends(engine: Engine) -> None:
    c = create(engine, ["u1", "u2"])
    engine.advance(0)
    assert view(engine, c)["status"] == "completed"
    book_of(engine).cancel(c.id).wait()
    v = view(engine, c)
    assert v["status"] == "cancelled" and v["metrics"]["sends"]["cancelled"] == 2


def test_an_unknown_campaign_is_not_found(engine: Engine) -> None:
    with pytest.raises(NotFound):
        book_of(engine).get("cmp_0000000000000000")
    with pytest.raises(NotFound):
        book_of(engine).cancel("nope")


# -- rows and uploads --------------------------------------------------------------------

def test_the_rows_file_is_on_disk_before_the_campaign_and_gone_after_it(make_engine: Callable[..., Engine],
                                                                        tmp_path: Path) -> None:
    engine = make_engine(campaign_dir=str(tmp_path))
    c = create(engine, ["u1", "u2"], scheduled_at=T0 + 60)
    assert (tmp_path / f"{c.id}.rows").is_file() and not list(tmp_path.glob("*.tmp"))
    engine.advance(60)
    assert view(engine, c)["status"] == "completed"
    assert list(tmp_path.iterdir()) == []


def test_an_upload_reports_bad_and_repeated_rows_and_keeps_the_first(tmp_path: Path) -> None:
    upload = Upload("cmp_test", RowsWriter(str(tmp_path), "cmp_test"))
    upload.add(1, "u1", {"email": "u1@example.com"}, None)
    upload.add(2, "", None, None)
    upload.add(3, "has space", None, None)
    upload.add(4, "u2", {"phone": "call me"}, None)
    upload.add(5, "u1", {"email": "other@example.com"}, None)
    upload.add(6, "u3", {"pushTokens": ["t"]}, None)
    assert upload.accepted == 2 and upload.rejected == 4
    assert [e["row"] for e in upload.errors] == [2, 3, 4, 5]
    assert "empty" in upload.errors[0]["message"] and "spaces" in upload.errors[1]["message"]
    assert "phone" in upload.errors[2]["message"] and "duplicate recipient 'u1'" in upload.errors[3]["message"]
    name = upload.finish()
    assert name == "cmp_test.rows" and (tmp_path / name).stat().st_size > 0


def test_an_upload_reports_at_most_a_thousand_errors_and_counts_them_all() -> None:
    upload = Upload("cmp_test", RowsWriter(None, "cmp_test"))
    for n in range(1, 1501):
        upload.add(n, "", None, None)
    upload.add(1501, "u1", None, None)
    assert upload.rejected == 1500 and len(upload.errors) == MAX_REPORTED_ERRORS
    assert isinstance(upload.finish(), bytes)  # no directory: the rows travel inline


# -- metrics -------------------------------------------------------------------------------

def test_prometheus_shows_campaigns_by_status_and_the_fanout(engine: Engine) -> None:
    create(engine, ["u1", "u2", "u3"])
    create(engine, ["u4"], scheduled_at=T0 + 60)
    engine.advance(0)
    registry = CollectorRegistry()
    HttpMetrics(engine, registry, campaign_stats=next(e for e in engine.extensions if isinstance(e, Campaigns)).book.stats)
    text = generate_latest(registry).decode()
    assert 'cascade_campaigns{status="completed"} 1.0' in text
    assert 'cascade_campaigns{status="scheduled"} 1.0' in text
    assert "cascade_campaign_sends_started_total 3.0" in text
    assert "cascade_campaign_fanout_sends_per_second" in text
