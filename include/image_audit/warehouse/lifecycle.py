"""The scan lifecycle, whole: its states, every transition, and who makes it.

One ``audit_scans`` row is one attempt at one image. Planning creates it ``pending`` (or ``rejected``
for a bad catalog row); the submit task moves it to ``submitted`` (or ``rejected``); the receiver
completes or fails it; the wait marks what never called back ``timed_out``. A retry is a new row (the
next attempt, a new deterministic scan id), so an attempt never goes back to ``pending``. Every change
is a conditional UPDATE on the state it expects (deciding module in :data:`TRANSITIONS`), so a late or
duplicated event never undoes a later one. The docs' diagram is drawn from :func:`mermaid` at build
time.
"""

from __future__ import annotations

from enum import StrEnum
from typing import NamedTuple


class ScanState(StrEnum):
    PENDING = "pending"  # planned, not yet accepted by Copyleaks
    SUBMITTED = "submitted"  # Copyleaks answered 201; waiting for the webhook
    COMPLETED = "completed"  # a detection result is stored
    FAILED = "failed"  # Copyleaks reported an error for this image (error webhook)
    TIMED_OUT = "timed_out"  # no webhook before the run's wait ended; a later run retries it
    REJECTED = "rejected"  # never sent: bad catalog row, or Copyleaks refused the request (400)


TERMINAL_STATES = frozenset({ScanState.COMPLETED, ScanState.FAILED, ScanState.TIMED_OUT, ScanState.REJECTED})
WAITING_STATES = frozenset({ScanState.PENDING, ScanState.SUBMITTED})


class Transition(NamedTuple):
    source: ScanState | None  # None: the row is created in ``target``
    target: ScanState
    event: str
    module: str  # where it is decided


_PLANNING, _SUBMIT = "image_audit.planning.plan", "image_audit.operators.submit"
_RESULTS, _PROGRESS = "image_audit.warehouse.results", "image_audit.warehouse.progress"
S = ScanState
TRANSITIONS: tuple[Transition, ...] = (
    Transition(None, S.PENDING, "planned (new image, or the next attempt)", _PLANNING),
    Transition(None, S.REJECTED, "bad catalog row", _PLANNING),
    Transition(S.PENDING, S.SUBMITTED, "Copyleaks accepted it (201, or 409)", _SUBMIT),
    Transition(S.PENDING, S.REJECTED, "invalid request, or Copyleaks' 400", _SUBMIT),
    Transition(S.PENDING, S.COMPLETED, "result raced ahead of the submit record", _RESULTS),
    Transition(S.PENDING, S.FAILED, "error callback raced ahead", _RESULTS),
    Transition(S.SUBMITTED, S.COMPLETED, "result callback", _RESULTS),
    Transition(S.SUBMITTED, S.FAILED, "error or unrecognised callback", _RESULTS),
    Transition(S.SUBMITTED, S.TIMED_OUT, "no callback before the wait's deadline", _PROGRESS),
    Transition(S.TIMED_OUT, S.COMPLETED, "late result (a result always wins)", _RESULTS),
    Transition(S.TIMED_OUT, S.FAILED, "late error callback", _RESULTS),
    Transition(S.FAILED, S.COMPLETED, "result after an error (a result always wins)", _RESULTS),
    Transition(S.REJECTED, S.COMPLETED, "a result for a refused submission (a result always wins)", _RESULTS),
)
del S


def mermaid() -> str:
    """The lifecycle as a Mermaid state diagram (docs/architecture.md shows it)."""
    lines = ["stateDiagram-v2"]
    for t in TRANSITIONS:
        source = "[*]" if t.source is None else t.source.value
        lines.append(f"    {source} --> {t.target.value}: {t.event}")
    return "\n".join(lines)
