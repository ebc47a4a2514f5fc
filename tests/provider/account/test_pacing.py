"""The account budget's pacing (``copyleaks_provider.account.pacing``): send slots a slow store can still
meet, spaced at the paced interval, and a paced process's heap kept out of the collector's walk."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys

import pytest

from copyleaks_provider.account.pacing import RESERVE_MARGIN, Pacer
from copyleaks_provider.settings import RATE_HEADROOM
from tests.support import ROOT


class _Clock:
    """The pacing module's clock: it moves only when the store takes its time, so a round trip is
    exactly the store's delay whatever else the machine is doing."""

    def __init__(self):
        self.now = 1_800_000_000.0

    def time(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch):
    from copyleaks_provider.account import pacing

    fake = _Clock()
    monkeypatch.setattr(pacing, "time", fake)
    return fake


class _SlowBudget:
    """The budget's arithmetic (``AccountState.reserve``: the next slot, none before ``earliest``)
    behind a store ``delay`` seconds away on ``clock``, and idle between reservations when ``idle`` is
    set."""

    def __init__(self, clock: _Clock, delay: float, idle: bool):
        self.clock, self.delay, self.idle, self.next_slot = clock, delay, idle, 0.0

    def reserve(self, kind: str, count: int, interval: float, earliest: float) -> float:
        self.clock.now += self.delay  # the behaviour under test: a store this far away
        start = earliest if self.idle else max(self.next_slot, earliest)
        self.next_slot = start + count * interval
        return start


def test_a_slow_store_still_gives_slots_its_answer_can_meet(clock):
    """An idle budget's slot is set as far ahead as the last reservation took (plus a margin): behind a
    store 50 ms away, slots after the first are all still usable when the answer comes, and none is
    later than it needs."""
    pacer = Pacer(_SlowBudget(clock, delay=0.05, idle=True), "api", per_second=10)
    pacer.take()  # the first one learns the round trip
    assert pacer.round_trip == pytest.approx(0.05)
    for _ in range(5):
        slot, send_by = pacer.take()
        answered = clock.now
        assert send_by == slot + pacer.lateness
        assert slot <= answered + pacer.round_trip + RESERVE_MARGIN  # not later than it needs
        assert answered <= send_by, "the slot was gone before its reservation came back"


def test_a_slower_reservation_than_the_margin_misses_its_slot(clock):
    """The margin is what the test above relies on: a reservation slower than the last by more than
    ``RESERVE_MARGIN`` and the lateness comes back after its slot's send-by time."""
    budget = _SlowBudget(clock, delay=0.05, idle=True)
    pacer = Pacer(budget, "api", per_second=10)
    pacer.take()
    clock.now += 1
    budget.delay = 0.05 + RESERVE_MARGIN + pacer.lateness + 0.001
    _, send_by = pacer.take()
    assert clock.now > send_by


def test_a_busy_budget_spaces_slots_at_the_paced_interval(clock):
    pacer = Pacer(_SlowBudget(clock, delay=0.0, idle=False), "api", per_second=10)
    slots = [pacer.take()[0] for _ in range(5)]
    gaps = [later - earlier for earlier, later in itertools.pairwise(slots)]
    assert gaps == pytest.approx([1 / (10 * RATE_HEADROOM)] * 4)


_FREEZE_PROBE = """
import gc, json, sys
from copyleaks_provider.account.pacing import pacers
from copyleaks_provider.settings import CopyleaksSettings

rate = int(sys.argv[1])
settings = CopyleaksSettings(email="e", api_key="k", requests_per_second=rate, checks_per_15_minutes=rate)
before = gc.get_freeze_count()
pacers(settings, state=None)
first = gc.get_freeze_count()
made_since = [[] for _ in range(1000)]  # tracked objects a second freeze would take
pacers(settings, state=None)
print(json.dumps([before, first, gc.get_freeze_count()]))
"""


@pytest.mark.parametrize("rate", [10, 0])
def test_a_paced_process_takes_its_start_up_heap_out_of_the_collectors_walk(rate):
    """A process whose requests are paced freezes the objects alive when its pacers are made (once), so
    no full collection walks them mid-run: one walk of a submit task's heap took 50-80 ms, past the
    slack of a send slot. A process with no budget to keep (rate 0) leaves its collector alone."""
    probe = subprocess.run(
        [sys.executable, "-c", _FREEZE_PROBE, str(rate)], capture_output=True, text=True, cwd=ROOT, check=True
    )
    before, first, again = json.loads(probe.stdout)
    assert before == 0
    if rate:
        assert first > 10_000, "the provider's modules were not frozen"
        assert again == first, "frozen a second time"
    else:
        assert first == again == 0
