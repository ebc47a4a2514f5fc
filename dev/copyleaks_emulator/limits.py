"""Copyleaks' per-account rate limits, enforced as strictly as documented (or stricter).

Each limit is a sliding window: a request is refused (429 with ``Retry-After``) when the window that
ends at its arrival already holds ``limit`` accepted requests. Refused requests do not use up the
budget. Logins also block: past the login limit, every login of the account is refused for
``login_block_seconds``. The limits are per account (the email behind the token or the login body),
whatever number of clients share it.
"""

from __future__ import annotations

import math
import time
from collections import Counter, deque
from dataclasses import dataclass, field

from copyleaks_emulator.settings import EmulatorSettings
from copyleaks_emulator.validation import ApiError

#: The three budgets of an account: ``api`` (every endpoint but the two others, the async submit
#: included), ``login`` and ``check`` (the sync check).
KINDS = ("api", "login", "check")


@dataclass
class _Window:
    """Accepted requests of the last ``seconds``; at most ``limit`` of them."""

    limit: int
    seconds: float
    accepted: deque[float] = field(default_factory=deque)

    def wait(self, now: float) -> float:
        """0 when a request arriving ``now`` fits (and is counted), else seconds until one would fit."""
        while self.accepted and self.accepted[0] <= now - self.seconds:
            self.accepted.popleft()
        if len(self.accepted) < self.limit:
            self.accepted.append(now)
            return 0.0
        return self.accepted[len(self.accepted) - self.limit] + self.seconds - now


class AccountLimits:
    """The emulator's enforcement of the three budgets, and the counters tests and benchmarks read.

    Counters: ``api_429``, ``login_429``, ``check_429`` (refused by a limit; fault injection has its
    own), ``peak_requests_per_second`` (the most API requests that arrived, refused ones included, in
    any one-second window) and ``api_requests``.
    """

    def __init__(self, settings: EmulatorSettings, counters: Counter[str]):
        self.settings = settings
        self.counters = counters
        self.reset()

    def reset(self) -> None:
        self._windows: dict[tuple[str, str], _Window] = {}
        self._arrivals: dict[str, deque[float]] = {}
        self._login_blocked_until: dict[str, float] = {}

    def admit(self, kind: str, account: str) -> None:
        """Count a request of ``kind`` by ``account``; ``ApiError(429)`` when it is over the limit."""
        now = time.monotonic()
        if kind == "api":
            self._count_arrival(account, now)
        if kind == "login":
            blocked = self._login_blocked_until.get(account, 0.0) - now
            if blocked > 0:
                self._refuse(kind, blocked, "this account is blocked from logging in after too many logins")
        window = self._window(kind, account)
        if window is None:
            return
        wait = window.wait(now)
        if wait <= 0:
            return
        if kind == "login":
            wait = self.settings.login_block_seconds
            self._login_blocked_until[account] = now + wait
            self._refuse(kind, wait, "too many logins; this account is blocked from logging in for a while")
        self._refuse(kind, wait, "too many requests for this account; retry later")

    def _window(self, kind: str, account: str) -> _Window | None:
        limit, seconds = {
            "api": (self.settings.api_requests_per_second, 1.0),
            "login": (self.settings.logins_per_window, self.settings.login_window_seconds),
            "check": (self.settings.checks_per_window, self.settings.check_window_seconds),
        }[kind]
        if not limit:  # 0: no limit
            return None
        window = self._windows.get((kind, account))
        if window is None or window.limit != limit or window.seconds != seconds:  # settings changed
            window = self._windows[kind, account] = _Window(int(limit), seconds)
        return window

    def _count_arrival(self, account: str, now: float) -> None:
        arrivals = self._arrivals.setdefault(account, deque())
        arrivals.append(now)
        while arrivals[0] <= now - 1.0:
            arrivals.popleft()
        self.counters["api_requests"] += 1
        if len(arrivals) > self.counters["peak_requests_per_second"]:
            self.counters["peak_requests_per_second"] = len(arrivals)

    def _refuse(self, kind: str, wait: float, message: str) -> None:
        self.counters[f"{kind}_429"] += 1
        raise ApiError(429, message, {"Retry-After": str(max(1, math.ceil(wait)))})
