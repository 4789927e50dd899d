"""The engine against a small reference model, driven by hypothesis.

Sends, signals in any order, clock advances, cancels and provider outages
are applied to both; after every step the deliveries and every send's state
must agree. The model is written from the contract alone, in a few lines a
rule, and shares no code with the engine.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from cascade.engine import AlreadyFinished, Engine, EngineConfig, ManualClock, MemoryProvider

RANK = {"delivered": 0, "viewed": 1, "clicked": 2}
EMITS = {"inapp": {"delivered", "viewed", "clicked", "failed"}, "push": {"delivered", "clicked", "failed"},
         "email": {"delivered", "viewed", "clicked", "failed"}, "sms": {"delivered", "clicked", "failed"}}
TEMPLATES = {
    "chain": ([("inapp", "viewed", 10), ("push", "clicked", 60), ("sms", None, None)], True),
    "pair": ([("push", "delivered", 5), ("email", None, None)], True),
    "mail": ([("email", "viewed", 30), ("sms", "delivered", 5), ("inapp", None, None)], True),
    "all": ([("inapp", None, None), ("email", None, None)], False),
}
RECIPIENTS = {
    "full": {"email": "f@x.io", "phone": "+15550100", "pushTokens": ["p1"]},
    "nopush": {"email": "n@x.io", "phone": "+15550101"},
    "quiet": {"email": "q@x.io", "phone": "+15550102", "pushTokens": ["p2"], "preferences": {"push": False}},
    "bare": {},
}
NEEDS = {"push": "pushTokens", "email": "email", "sms": "phone"}


def template_body(name: str) -> dict:
    steps, seq = TEMPLATES[name]
    return {"channels": [{"channel": c, **({"stopCondition": s, "waitMinutes": w} if s else {})} for c, s, w in steps],
            "config": {"sequenceEnabled": seq}}


@dataclass
class ModelSend:
    name: str
    steps: list
    sequence: bool
    recipient: str
    created: int
    status: str = "active"
    step_status: list = field(default_factory=list)
    current: int = 0
    deadline: float | None = None
    signals: set = field(default_factory=set)
    reached: bool = False


class Model:
    def __init__(self) -> None:
        self.sends: list[ModelSend] = []
        self.failing: set[str] = set()
        self.delivered: list[str] = []

    def reachable(self, s: ModelSend, channel: str) -> bool:
        r = RECIPIENTS[s.recipient]
        return r.get("preferences", {}).get(channel) is not False and (channel == "inapp" or bool(r.get(NEEDS[channel])))

    def fire(self, s: ModelSend, i: int, t: float) -> str:
        channel, cond, wait = s.steps[i]
        if not self.reachable(s, channel):
            s.step_status[i] = "skipped"
        elif channel in self.failing:
            s.step_status[i] = "failed"
            s.signals.add((i, "failed"))  # a later `failed` event is the same failure: a duplicate
        else:
            self.delivered.append(f"{s.name}.{i + 1}")
            s.reached = True
            s.step_status[i] = "waiting" if s.sequence and cond else "fired"
            if s.step_status[i] == "waiting":
                s.deadline = t + wait * 60
        return s.step_status[i]

    def walk(self, s: ModelSend, i: int, t: float) -> None:
        while i < len(s.steps):
            s.current = i
            if self.fire(s, i, t) == "waiting":
                return
            i += 1
        s.deadline = None
        s.status = "completed" if s.reached else "failed"

    def start(self, s: ModelSend) -> None:
        s.step_status = ["pending"] * len(s.steps)
        self.sends.append(s)
        if s.sequence:
            self.walk(s, 0, s.created)
        else:
            for i in range(len(s.steps)):
                self.fire(s, i, s.created)
            s.status = "completed" if s.reached else "failed"

    def signal(self, s: ModelSend, i: int, kind: str, t: float) -> str:
        if i >= len(s.steps):
            return "unknown_message"
        if kind not in EMITS[s.steps[i][0]]:
            return "unsupported_signal"
        if s.step_status[i] in ("pending", "skipped"):
            return "unknown_message"
        if (i, kind) in s.signals:
            return "duplicate"
        s.signals.add((i, kind))
        if s.status != "active" or not s.sequence:
            return "accepted"
        cond = s.steps[i][1]
        if kind == "failed":
            if i == s.current and s.step_status[i] == "waiting":
                s.step_status[i] = "failed"
                s.deadline = None
                self.walk(s, i + 1, t)
        elif cond and RANK[kind] >= RANK[cond]:
            waiting_now = s.step_status[s.current] == "waiting"
            if (i == s.current and waiting_now) or (i < s.current and waiting_now):
                if i < s.current:
                    s.step_status[s.current] = "cancelled"
                s.step_status[i] = "stopped"
                s.status, s.deadline = "stopped", None
        return "accepted"

    def advance(self, now: float, target: float) -> None:
        while True:
            due = [s for s in self.sends if s.deadline is not None and s.deadline <= target]
            if not due:
                return
            s = min(due, key=lambda x: (x.deadline, x.created))
            t = s.deadline
            s.step_status[s.current] = "fired"
            s.deadline = None
            self.walk(s, s.current + 1, t)

    def cancel(self, s: ModelSend) -> bool:
        if s.status != "active":
            return False
        s.step_status = ["cancelled" if x == "waiting" else x for x in s.step_status]
        s.status, s.deadline = "cancelled", None
        return True


class EngineVersusModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.delivered: list[str] = []
        self.providers = {ch: MemoryProvider(ch, sink=self.delivered) for ch in ("push", "email", "sms")}
        self.clock = ManualClock(0.0)
        self.engine = Engine(self.clock, self.providers, EngineConfig(shards=3, gc_freeze_interval_s=0)).start()
        # in-app messages land in `delivered` too, in order with the providers' ones
        self.engine.watch_inbox(lambda _rid, message_id, kind: kind == "message" and self.delivered.append(message_id))
        for name in TEMPLATES:
            self.engine.put_template(name, template_body(name)).wait()
        for rid, body in RECIPIENTS.items():
            self.engine.put_recipient(rid, body).wait()
        self.model = Model()
        self.ids: list[str] = []
        self.seen = 0

    def teardown(self) -> None:
        self.engine.stop()

    def names(self, messages: list[str]) -> list[str]:
        index = {sid: i for i, sid in enumerate(self.ids)}
        return [f"s{index[m.rsplit('.', 1)[0]]}.{m.rsplit('.', 1)[1]}" for m in messages]

    @rule(template=st.sampled_from(sorted(TEMPLATES)), recipient=st.sampled_from(sorted(RECIPIENTS)))
    def send(self, template: str, recipient: str) -> None:
        view = self.engine.send(template, recipient)[0].wait()
        self.ids.append(view["id"])
        steps, seq = TEMPLATES[template]
        self.model.start(ModelSend(f"s{len(self.ids) - 1}", steps, seq, recipient, int(self.clock.now())))

    @precondition(lambda self: self.ids)
    @rule(data=st.data(), step=st.integers(1, 4), kind=st.sampled_from(["delivered", "viewed", "clicked", "failed"]))
    def signal(self, data: st.DataObject, step: int, kind: str) -> None:
        n = data.draw(st.integers(0, len(self.ids) - 1))
        got = self.engine.signals([(f"{self.ids[n]}.{step}", None, None, kind, None)]).wait()
        want = self.model.signal(self.model.sends[n], step - 1, kind, self.clock.now())
        if want in ("accepted", "duplicate"):
            assert (got["accepted"], got["duplicates"]) == ((1, 0) if want == "accepted" else (0, 1)), got
        else:
            assert [e["code"] for e in got["errors"]] == [want], got

    @rule(seconds=st.sampled_from([1, 59, 300, 600, 1800, 3600, 7200]))
    def advance(self, seconds: int) -> None:
        now = self.clock.now()
        self.engine.advance(seconds)
        self.model.advance(now, now + seconds)

    @precondition(lambda self: self.ids)
    @rule(data=st.data())
    def cancel(self, data: st.DataObject) -> None:
        n = data.draw(st.integers(0, len(self.ids) - 1))
        try:
            self.engine.cancel_send(self.ids[n]).wait()
            cancelled = True
        except AlreadyFinished:
            cancelled = False
        assert cancelled == self.model.cancel(self.model.sends[n])

    @rule(channel=st.sampled_from(["push", "email", "sms"]), failing=st.booleans())
    def provider_outage(self, channel: str, failing: bool) -> None:
        self.providers[channel].fail(failing)
        (self.model.failing.add if failing else self.model.failing.discard)(channel)

    @invariant()
    def same_deliveries(self) -> None:
        # Equal deadlines on different shards may fire in either order, so
        # compare what was delivered since the last step as a multiset, and
        # each send's own messages in order.
        got, want = self.names(self.delivered[self.seen:]), self.model.delivered[self.seen:]
        assert Counter(got) == Counter(want)
        for s in {m.split(".")[0] for m in want}:
            assert [m for m in got if m.split(".")[0] == s] == [m for m in want if m.split(".")[0] == s]
        self.seen = len(self.delivered)

    @invariant()
    def same_states(self) -> None:
        for sid, m in zip(self.ids, self.model.sends):
            view = self.engine.get_send(sid).wait()
            assert (view["status"], [x["status"] for x in view["steps"]]) == (m.status, m.step_status), (m, view)


EngineVersusModel.TestCase.settings = settings(
    max_examples=200, stateful_step_count=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
test_engine_matches_the_reference_model = EngineVersusModel.TestCase
