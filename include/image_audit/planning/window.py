"""A night that fits: how many submissions a run's window holds at the account's request rate.

Planning caps a run at :func:`submission_capacity`; what does not fit stays ``pending`` with a
``last_error`` starting with :data:`DEFERRED_BY_WINDOW` (or :data:`DEFERRED_BY_BUDGET` for the credit
budget, :data:`DEFERRED_BY_CREDITS` for the account's balance), and the report's backlog section counts
them and says when they clear.
"""

from __future__ import annotations

import math
from decimal import Decimal

from copyleaks_provider.settings import RATE_HEADROOM

#: Share of a window's requests planned as submissions: the hook paces at ``RATE_HEADROOM`` of the
#: account's rate, and 3% of that is left for retries.
WINDOW_SAFETY = Decimal(str(RATE_HEADROOM)) * Decimal("0.97")
#: How ``last_error`` of a deferred scan starts, per cap (the report counts the backlog by these).
DEFERRED_BY_BUDGET = "deferred: the run's budget"
DEFERRED_BY_CREDITS = "deferred: the account's credits"
DEFERRED_BY_WINDOW = "deferred: the run's submission window"


def submission_capacity(requests_per_second: float | None, minutes: float | None) -> int | None:
    """Submissions that fit ``minutes`` at the account's ``requests_per_second`` (None: no cap).

    ``floor(rate * 60 * minutes * 0.955 * 0.97)``, computed exactly (10/s for 360 minutes is 200,091).
    No window, or a rate of 0 (no limit), means no cap.
    """
    if minutes is None or not requests_per_second or requests_per_second <= 0:
        return None
    exact = Decimal(str(requests_per_second)) * 60 * Decimal(str(max(minutes, 0))) * WINDOW_SAFETY
    return math.floor(exact)


def submission_minutes(submissions: int, requests_per_second: float | None) -> int | None:
    """Minutes of window ``submissions`` need at ``requests_per_second`` (rounded up; None: no limit)."""
    if not requests_per_second or requests_per_second <= 0:
        return None
    per_minute = Decimal(str(requests_per_second)) * 60 * WINDOW_SAFETY
    return math.ceil(Decimal(submissions) / per_minute)
