"""What the webhook receiver hands on: an authenticated callback, and the sink that keeps it.

The receiver (:mod:`copyleaks_provider.webhooks.receiver`) authenticates and parses; where a callback goes is
the sink's business. A sink stores each callback durably before ``store`` returns (the receiver then
answers 2xx, and Copyleaks never sends it again), is idempotent (Copyleaks retries, duplicates are
normal), and raises :class:`CallbackSinkUnavailable` when it cannot store now (the receiver answers
503 and Copyleaks retries later).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol

from copyleaks_provider.models import WebhookBody

#: How the reason of a body the receiver does not recognise starts (then a short validation summary).
UNRECOGNISED_REASON = "Copyleaks sent a callback this receiver does not recognise: "


class CallbackOutcome(StrEnum):
    STORED = "stored"  # a detection result, stored; the scan is completed
    FAILED_RECORDED = "failed_recorded"  # an error callback, kept; the scan is failed with Copyleaks' message
    UNRECOGNISED_RECORDED = "unrecognised_recorded"  # an unrecognised body, kept; the scan is failed
    DUPLICATE = "duplicate"  # the scan is unchanged (a result already stored, or already failed)
    UNKNOWN_SCAN = "unknown_scan"  # no such scan: nothing written


@dataclass(frozen=True)
class Callback:
    """One authenticated callback for ``scan_id`` (the id of its URL).

    ``body``: the validated body, or None when it was not recognised; then ``problem`` says why (no
    values from the body). ``raw``: the body as parsed (any JSON value), for keeping verbatim.
    ``raw_bytes``: the body as received. ``unreadable``: the body cannot be kept as JSON (not JSON,
    nested too deeply, a number no float holds): only ``raw_bytes`` is kept.
    """

    scan_id: str
    body: WebhookBody | None
    raw: Any
    problem: str | None = None
    raw_bytes: bytes | None = None
    unreadable: bool = False

    def __post_init__(self) -> None:
        if self.body is None and not self.problem:
            raise ValueError("an unrecognised callback needs the problem found with it")
        if self.unreadable and (self.raw_bytes is None or self.body is not None):
            raise ValueError("an unreadable callback is kept as its raw bytes, with no body")

    @classmethod
    def of_unreadable(cls, scan_id: str, raw_bytes: bytes, problem: str) -> Callback:
        """A callback whose body cannot be kept as JSON: kept as its bytes, failing its scan."""
        return cls(scan_id, None, None, problem=problem, raw_bytes=raw_bytes, unreadable=True)

    @property
    def failure_reason(self) -> str | None:
        """Why this callback fails its scan; None for a detection result."""
        if self.body is None:
            return UNRECOGNISED_REASON + (self.problem or "")
        return self.body.failure_reason() if self.body.is_error else None


class CallbackSinkUnavailable(Exception):
    """The sink cannot store callbacks now (its database is away): the receiver answers 503."""


class CallbackSink(Protocol):
    """Where the receiver puts authenticated callbacks."""

    async def store(self, callback: Callback) -> CallbackOutcome:
        """Keep ``callback`` durably (idempotent); raise :class:`CallbackSinkUnavailable` if not now."""
        ...

    async def check(self) -> None:
        """Raise :class:`CallbackSinkUnavailable` when ``store`` could not work (the health check)."""
        ...

    async def close(self) -> None:
        """Release connections (the receiver app shuts down)."""
        ...


class InMemoryCallbackSink:
    """Callbacks kept in this process (tests, notebooks, a first look at the API): not durable.

    ``known_scans``: when given, a callback for any other scan is ``unknown_scan``. The first result
    of a scan completes it; later ones are duplicates; an error fails a scan that has no result.
    """

    def __init__(self, known_scans: set[str] | None = None) -> None:
        self.known_scans = known_scans
        self.results: dict[str, Callback] = {}
        self.failures: dict[str, list[Callback]] = defaultdict(list)

    async def store(self, callback: Callback) -> CallbackOutcome:
        if self.known_scans is not None and callback.scan_id not in self.known_scans:
            return CallbackOutcome.UNKNOWN_SCAN
        if callback.scan_id in self.results:
            return CallbackOutcome.DUPLICATE
        if callback.failure_reason is None:
            self.results[callback.scan_id] = callback
            return CallbackOutcome.STORED
        first = not self.failures[callback.scan_id]
        self.failures[callback.scan_id].append(callback)
        if not first:
            return CallbackOutcome.DUPLICATE
        if callback.body is None:
            return CallbackOutcome.UNRECOGNISED_RECORDED
        return CallbackOutcome.FAILED_RECORDED

    async def check(self) -> None:
        return None

    async def close(self) -> None:
        return None
