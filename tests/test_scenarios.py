"""Every executable example of tests/data/scenarios.json, run on the engine
with a manual clock starting at t=0 and in-memory providers."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from cascade.engine import Engine, EngineConfig, ManualClock, MemoryProvider

DATA = json.loads((Path(__file__).parent / "data" / "scenarios.json").read_text())


class Harness:
    def __init__(self, template: str) -> None:
        self.delivered: list[str] = []
        self.providers = {ch: MemoryProvider(ch, sink=self.delivered) for ch in ("push", "email", "sms")}
        self.engine = Engine(ManualClock(0.0), self.providers, EngineConfig(shards=3)).start()
        # in-app messages land in `delivered` too, in order with the providers' ones
        self.engine.watch_inbox(lambda _rid, message_id, kind: kind == "message" and self.delivered.append(message_id))
        self.engine.put_template("t", DATA["templates"][template]).wait()
        for rid, body in DATA["recipients"].items():
            self.engine.put_recipient(rid, body).wait()
        self.names: dict[str, str] = {}  # send id -> scenario name

    def run(self, action: dict[str, Any]) -> None:
        e = self.engine
        if "send" in action:
            view = e.send("t", action["recipient"], action.get("data"))[0].wait()
            self.names[view["id"]] = action["send"]
        elif "advance" in action:
            e.advance(action["advance"])
        elif "signal" in action:
            name, step = action["signal"].split(".")
            e.signals([(f"{self.id_of(name)}.{step}", None, None, action["type"], None)]).wait()
        elif "fail_provider" in action:
            self.providers[action["fail_provider"]].fail()
        elif "cancel" in action:
            e.cancel_send(self.id_of(action["cancel"])).wait()
        elif "expect" in action:
            self.check(action["expect"])
        else:
            raise AssertionError(f"unknown action {action}")

    def id_of(self, name: str) -> str:
        return next(sid for sid, n in self.names.items() if n == name)

    def check(self, expect: dict[str, Any]) -> None:
        for key, want in expect.items():
            if key == "delivered":
                got = [f"{self.names[m.rsplit('.', 1)[0]]}.{m.rsplit('.', 1)[1]}" for m in self.delivered]
                assert got == want
                continue
            view = self.engine.get_send(self.id_of(key)).wait()
            if "status" in want:
                assert view["status"] == want["status"], view
            if "stoppedBy" in want:
                assert view["stoppedBy"] == want["stoppedBy"], view
            if "steps" in want:
                assert [s["status"] for s in view["steps"]] == want["steps"], view


@pytest.mark.parametrize("scenario", DATA["scenarios"], ids=[s["name"] for s in DATA["scenarios"]])
def test_scenario(scenario: dict[str, Any]) -> None:
    h = Harness(scenario["template"])
    try:
        for action in scenario["actions"]:
            h.run(action)
    finally:
        h.engine.stop()
