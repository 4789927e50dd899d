"""The send pacer (engine/send_pacer.py): under its lag target it admits
everything; a period over it paces new sends below what was admitted; the
rate grows back while the loop keeps up, and pacing ends once demand is
well below it. A process over its CPU share stops taking more, and well
over it, takes less, before any lag shows."""

from __future__ import annotations

from cascade.engine.send_pacer import PERIOD_S, SendPacer


class Clock:
    def __init__(self) -> None:
        self.t = 100.0
        self.cpu = 5.0
        self.busy = 0.5  # CPU seconds the process uses a second

    def __call__(self) -> float:
        return self.t

    def process_time(self) -> float:
        return self.cpu


def offer(pacer: SendPacer, clock: Clock, per_s: float, seconds: float, lag_s: float) -> int:
    """Sends offered at an even rate with a lag probe every 10 ms; how many were admitted."""
    admitted, step = 0, 0.01
    due = 0.0
    for _ in range(round(seconds / step)):
        clock.t += step
        clock.cpu += clock.busy * step
        due += per_s * step
        while due >= 1.0:
            due -= 1.0
            admitted += not pacer.refuse()
        pacer.observe(lag_s)
    return admitted


def test_under_the_target_every_send_is_admitted() -> None:
    clock = Clock()
    pacer = SendPacer(0.02, clock)
    assert offer(pacer, clock, 2000, 5.0, lag_s=0.015) == 10_000
    assert pacer.rate is None and pacer.refused == 0


def test_over_the_target_sends_are_paced_below_what_was_admitted_then_released() -> None:
    clock = Clock()
    pacer = SendPacer(0.02, clock)
    offer(pacer, clock, 2000, 2.0, lag_s=0.0)
    offer(pacer, clock, 2000, PERIOD_S, lag_s=0.06)
    assert pacer.rate is not None and 1500 <= pacer.rate <= 1800
    paced = offer(pacer, clock, 2000, 1.0, lag_s=0.06)  # the loop stays behind: the rate keeps falling
    assert paced < 1700 and pacer.refused > 0
    low = pacer.rate
    offer(pacer, clock, 2000, 3.0, lag_s=0.0)  # it keeps up again: the rate grows back
    assert pacer.rate is not None and low is not None and pacer.rate > 1.3 * low
    assert offer(pacer, clock, 500, 5.0, lag_s=0.0) == 2500  # demand well below: not paced at all
    assert pacer.rate is None


def test_a_target_of_zero_never_paces() -> None:
    clock = Clock()
    pacer = SendPacer(0.0, clock)
    assert offer(pacer, clock, 2000, 2.0, lag_s=1.0) == 4000


def test_over_its_cpu_share_the_rate_stops_growing_and_well_over_it_eases_down() -> None:
    clock = Clock()
    pacer = SendPacer(0.02, clock, cpu_share=0.9, cpu=clock.process_time)
    assert offer(pacer, clock, 2000, 2.0, lag_s=0.0) == 4000  # half a core: not paced
    clock.busy = 0.92  # over the share, no lag yet: held at what it was taking
    offer(pacer, clock, 2000, PERIOD_S, lag_s=0.0)
    held = pacer.rate
    assert held is not None and 1800 <= held <= 2100
    assert offer(pacer, clock, 6000, 2.0, lag_s=0.0) < 2.0 * 1.1 * held  # demand triples, the rate does not
    assert pacer.rate == held
    clock.busy = 1.0  # well over it: eased down a little each period, still without lag
    offer(pacer, clock, 6000, 2.0, lag_s=0.0)
    assert pacer.rate is not None and 0.7 * held < pacer.rate < 0.9 * held
    clock.busy = 0.6  # room again: the rate grows, and is lifted once demand is well below it
    offer(pacer, clock, 6000, 2.0, lag_s=0.0)
    assert pacer.rate is not None and pacer.rate > 0.9 * held
    assert offer(pacer, clock, 500, 5.0, lag_s=0.0) == 2500 and pacer.rate is None


def test_a_cpu_share_of_zero_paces_on_the_lag_alone() -> None:
    clock = Clock()
    clock.busy = 1.0
    pacer = SendPacer(0.02, clock, cpu_share=0.0, cpu=clock.process_time)
    assert offer(pacer, clock, 2000, 2.0, lag_s=0.0) == 4000 and pacer.rate is None
