"""Engagement order (rule 14) against the template's fixed order, on one
simulated population.

Each simulated person answers on one channel of their own with a good
probability and on the others rarely. Every round each person gets one send
of the same four-step chain (every step waits 5 minutes for a click) twice:
once from a template in fixed order (inapp, push, email, sms), once from
the same template with `order = "engagement"`, each in an engine of its own
(in-process, manual clock). Whether a person would click a given channel in
a given round is drawn once, so both orders face the very same people.
Reported, per order: messages sent per engaged send, escalation rate
(windows that ended without the click), time to engagement, and per round
how often the learned order put the person's own channel first.

    ./run bench ordering [--people 2000] [--rounds 12] [--seed 1]

Last line: one JSON object.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import resource
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cascade.engine import Engine, EngineConfig, ManualClock, MemoryProvider  # noqa: E402

CHANNELS = ("inapp", "push", "email", "sms")
PREFERRED_WEIGHTS = (0.35, 0.25, 0.25, 0.15)  # how many people answer on each channel
WINDOW_MIN = 5
T0 = 1_800_000_000.0


def template(order: str) -> dict:
    steps = [{"channel": c, "stopCondition": "clicked", "waitMinutes": WINDOW_MIN, "content": {"body": "hi"}}
             for c in CHANNELS]
    if order == "template":
        steps[-1] = {"channel": CHANNELS[-1], "content": {"body": "hi"}}
    return {"channels": steps, "config": {"sequenceEnabled": True, "order": order}}


class Population:
    def __init__(self, people: int, rounds: int, seed: int) -> None:
        rng = random.Random(seed)
        self.ids = [f"p{i}" for i in range(people)]
        self.preferred = [rng.choices(CHANNELS, PREFERRED_WEIGHTS)[0] for _ in self.ids]
        self.rates = []
        for pref in self.preferred:
            own = rng.uniform(0.5, 0.9)
            self.rates.append({c: own if c == pref else rng.uniform(0.0, 0.08) for c in CHANNELS})
        # would[r][i][c]: person i clicks channel c if it reaches them in round r
        self.would = [[{c: rng.random() < rates[c] for c in CHANNELS} for rates in self.rates]
                      for _ in range(rounds)]
        self.offset = [[rng.random() for _ in self.ids] for _ in range(rounds)]  # when in the window


def simulate(order: str, pop: Population, rounds: int) -> dict:
    sinks = {c: MemoryProvider(c, record=False) for c in ("push", "email", "sms")}
    engine = Engine(ManualClock(T0), sinks, EngineConfig(shards=2, gc_freeze_interval_s=0)).start()
    try:
        engine.put_template("chain", template(order)).wait(None)
        for rid in pop.ids:
            engine.put_recipient(rid, {"email": f"{rid}@example.com", "phone": "+15550100", "pushTokens": ["t"]})
        per_round = []
        totals = {"sends": 0, "engaged": 0, "messages": 0, "windows": 0, "escalations": 0}
        minutes: list[float] = []
        for r in range(rounds):
            reply, ids = engine.send_many("chain", pop.ids)
            reply.wait(None)
            orders = [[s["channel"] for s in engine.get_send(sid).wait(None)["steps"]] for sid in ids]
            live = list(range(len(ids)))
            engaged_round = messages_round = 0
            for stage in range(len(CHANNELS)):
                events, still = [], []
                for i in live:
                    channel = orders[i][stage]
                    messages_round += 1
                    if pop.would[r][i][channel]:
                        events.append((None, ids[i], channel, "clicked", None))
                        engaged_round += 1
                        minutes.append((stage + pop.offset[r][i]) * WINDOW_MIN)
                    elif stage < len(CHANNELS) - 1:
                        totals["escalations"] += 1
                        still.append(i)
                    if stage < len(CHANNELS) - 1:
                        totals["windows"] += 1
                if events:
                    engine.signals(events).wait(None)
                engine.advance(WINDOW_MIN * 60)
                live = still
            first_is_own = sum(orders[i][0] == pop.preferred[i] for i in range(len(ids))) / len(ids)
            per_round.append({"round": r + 1, "first_channel_is_own": round(first_is_own, 3),
                              "messages_per_engaged": round(messages_round / max(engaged_round, 1), 3)})
            totals["sends"] += len(ids)
            totals["engaged"] += engaged_round
            totals["messages"] += messages_round
        fired = sum(s.accepted for s in sinks.values())  # the engine's own count of provider messages
    finally:
        engine.stop()
    return {
        "messages_per_engaged": totals["messages"] / max(totals["engaged"], 1),
        "escalation_rate": totals["escalations"] / max(totals["windows"], 1),
        "engaged_share": totals["engaged"] / totals["sends"],
        "minutes_to_engagement_p50": statistics.median(minutes) if minutes else None,
        "minutes_to_engagement_mean": statistics.fmean(minutes) if minutes else None,
        "provider_messages": fired, "rounds": per_round,
    }


def converged_round(rounds: list[dict], level: float) -> int | None:
    """The first round from which the own channel came first at least `level` of the time."""
    for k, r in enumerate(rounds):
        if all(x["first_channel_is_own"] >= level for x in rounds[k:]):
            return int(r["round"])
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--people", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    pop = Population(args.people, args.rounds, args.seed)
    began, cpu0 = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF)
    fixed = simulate("template", pop, args.rounds)
    learned = simulate("engagement", pop, args.rounds)
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    wall = time.perf_counter() - began
    cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    print(f"interpreter: {platform.python_implementation()} {platform.python_version()} ({sys.executable})")
    print(f"{args.people} people x {args.rounds} rounds, seed {args.seed}; own channel shares "
          + ", ".join(f"{c} {pop.preferred.count(c) / args.people:.0%}" for c in CHANNELS))
    print(f"{'':28}{'fixed order':>14}{'engagement':>14}")
    for key, label in (("messages_per_engaged", "messages per engaged send"), ("escalation_rate", "escalation rate"),
                       ("engaged_share", "sends engaged"), ("minutes_to_engagement_p50", "minutes to engagement p50"),
                       ("minutes_to_engagement_mean", "minutes to engagement mean")):
        print(f"{label:28}{fixed[key]:>14.3f}{learned[key]:>14.3f}")
    print("round  own channel first (learned)  messages/engaged fixed  learned")
    for f, g in zip(fixed["rounds"], learned["rounds"]):
        print(f"{g['round']:>5}  {g['first_channel_is_own']:>27.1%}  {f['messages_per_engaged']:>22.2f}"
              f"  {g['messages_per_engaged']:>7.2f}")
    conv = converged_round(learned["rounds"], 0.8)
    print(f"learned order puts the own channel first >= 80% of the time from round {conv}; "
          f"wall {wall:.1f} s, CPU {cpu:.1f} s")
    print(json.dumps({
        "bench": "ordering", "interpreter": platform.python_version(), "people": args.people,
        "rounds": args.rounds, "seed": args.seed, "fixed": fixed, "engagement": learned,
        "messages_per_engaged_ratio": learned["messages_per_engaged"] / fixed["messages_per_engaged"],
        "converged_round_80": conv, "wall_s": round(wall, 2), "cpu_s": round(cpu, 2),
    }))


if __name__ == "__main__":
    main()
