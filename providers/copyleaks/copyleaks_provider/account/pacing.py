"""Request pacing: each request waits for its send slot of the account's shared budget.

Copyleaks limits the *account*'s request rate, so the budget is the deployment's
(:mod:`copyleaks_provider.account.state`); a ``Pacer`` reserves slots from it a few at a time and hands
them out to one client's requests.
"""

from __future__ import annotations

import functools
import gc
import time
from collections import deque

from copyleaks_provider.account.state import AccountState
from copyleaks_provider.settings import RATE_HEADROOM, CopyleaksSettings

#: Each reservation from the shared budget takes this many seconds' worth of slots (at least one). Kept
#: small: a process held up (CPU, GC) just before sending holds back all the slots it owns, then sends
#: them at once.
RESERVE_SECONDS = 0.025
#: Slots a request may miss (its process held up past each) before it is sent anyway.
MAX_MISSED_SLOTS = 20
#: How much slower than the last one a reservation may come back and still meet its first slot.
RESERVE_MARGIN = 0.010


class Pacer:
    """Send times (epoch seconds) from one of the account's shared budgets, reserved
    ``RESERVE_SECONDS`` at a time.

    A request may start up to ``lateness`` after its slot: an eighth of the ``1 - RATE_HEADROOM`` slack
    (6 ms at 10 requests/s), the rest left to what happens between starting a request and Copyleaks
    counting it (a process descheduled mid-send, the network, Copyleaks' own queue). A slot missed by
    more (the process was held up) is given up, since a late request lands among the next process's
    punctual ones and crowds Copyleaks' one-second window. Not thread-safe: each client calls it under
    its own lock.
    """

    def __init__(self, state: AccountState, kind: str, per_second: float):
        self.state, self.kind = state, kind
        self.interval = 1.0 / (per_second * RATE_HEADROOM)
        self.block = max(1, int(per_second * RESERVE_SECONDS))
        self.lateness = (1 - RATE_HEADROOM) / 8
        #: How long this process's last reservation took (the store's round trip, thread hop included).
        self.round_trip = 0.0
        self._slots: deque[float] = deque()

    def take_reserved(self) -> tuple[float, float] | None:
        """The next usable slot already reserved and the time to send by, if any (no database trip)."""
        usable = time.time() - self.lateness
        while self._slots and self._slots[0] < usable:
            self._slots.popleft()
        if not self._slots:
            return None
        slot = self._slots.popleft()
        return slot, slot + self.lateness

    def take(self) -> tuple[float, float]:
        """The next usable slot and the time to send by, reserving more when none is left.

        An idle budget gives its first slot no earlier than the answer can be back: now, plus the last
        round trip to the store, plus ``RESERVE_MARGIN``. A slot in the past when the answer came would
        be sent late into the slack of the second that follows; one set too close to now would be
        missed by every reservation slower than the last (a store across the network).
        """
        taken = self.take_reserved()
        if taken is None:
            asked = time.time()
            earliest = asked + self.round_trip + RESERVE_MARGIN
            start = self.state.reserve(self.kind, self.block, self.interval, earliest)  # a database trip
            self.round_trip = time.time() - asked
            self._slots.extend(start + i * self.interval for i in range(1, self.block))
            taken = start, start + self.lateness
        return taken


def pacers(settings: CopyleaksSettings, state: AccountState) -> dict[str, Pacer]:
    """The budgets this account's requests are paced by: ``api`` and ``check`` (0 = no limit)."""
    budgets = {"api": settings.requests_per_second, "check": settings.checks_per_15_minutes / 900.0}
    paced = {kind: Pacer(state, kind, rate) for kind, rate in budgets.items() if rate > 0}
    if paced:
        freeze_start_up_heap()
    return paced


@functools.cache
def freeze_start_up_heap() -> None:
    """Once per process that paces requests: collect, then ``gc.freeze()`` every object alive so far
    (as Airflow's executors do before they fork), so a full collection over Airflow's modules cannot
    outlast a slot's slack (``Pacer``) and send a request late into the next process's second.

    Objects made later are still collected; cycles among the frozen ones (module-level objects, which
    live as long as the process) are not.
    """
    gc.collect()
    gc.freeze()
