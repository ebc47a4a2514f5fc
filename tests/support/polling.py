"""Waiting in tests for what another process or thread does: the one poller of every suite.

Use it where nothing signals the moment (another process's state, a database, a server's counters);
where something does, wait on that instead (a ``threading.Event``, a ``Condition``, an ``asyncio`` future).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_for(predicate: Callable[[], T], what: str, timeout: float = 120, interval: float = 0.1) -> T:
    """``predicate()``'s first truthy value, polled every ``interval`` s; fails the test after ``timeout``
    saying ``what`` was not seen."""
    deadline = time.monotonic() + timeout
    while True:
        if value := predicate():
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not seen within {timeout} s: {what}")
        time.sleep(interval)  # the poll's interval: nothing signals what the predicate looks for
