"""An injected clock: time that stands still until the test moves it on.

Code under test reads the time from its module's ``time`` (``time.time()``, ``time.monotonic()``) or
``datetime`` (``datetime.now(tz)``) global; a test puts a :class:`FakeClock` in their place with
``monkeypatch`` (see :meth:`FakeClock.install`), then calls :meth:`FakeClock.advance` instead of sleeping
until a token expires or a window moves on. Everything else of the ``time`` module (``sleep``...) is the
real one.
"""

from __future__ import annotations

import time as _time
from datetime import datetime as _datetime
from datetime import tzinfo
from types import ModuleType

import pytest


class FakeClock:
    """Wall and monotonic clocks frozen at the real ones' values when made, moved only by ``advance``."""

    def __init__(self) -> None:
        self._wall = _time.time()
        self._monotonic = _time.monotonic()
        clock = self

        class _FakeDatetime(_datetime):
            @classmethod
            def now(cls, tz: tzinfo | None = None) -> _datetime:  # type: ignore[override]
                return _datetime.fromtimestamp(clock.time(), tz)

        #: Stands in for the ``datetime`` class: ``datetime.now(tz)`` reads this clock.
        self.datetime = _FakeDatetime

    def time(self) -> float:
        return self._wall

    def monotonic(self) -> float:
        return self._monotonic

    def advance(self, seconds: float) -> None:
        self._wall += seconds
        self._monotonic += seconds

    def __getattr__(self, name: str):  # sleep, perf_counter...: the real time module's
        return getattr(_time, name)

    def install(self, monkeypatch: pytest.MonkeyPatch, *modules: ModuleType) -> FakeClock:
        """Make each module's ``time`` global (and its ``datetime``, when it has one) read this clock."""
        for module in modules:
            if isinstance(getattr(module, "time", None), ModuleType):
                monkeypatch.setattr(module, "time", self)
            if getattr(module, "datetime", None) is _datetime:
                monkeypatch.setattr(module, "datetime", self.datetime)
        return self
