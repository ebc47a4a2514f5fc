"""The backlog: scans of the DAG waiting for a later run, why, and when they clear at the account's rate.

The report's "Waiting for later runs" section; the window and the budget that hold scans back are
planning's (``image_audit.planning.window``).
"""

from __future__ import annotations

import math

from sqlalchemy import case, func, select
from sqlalchemy.engine import Connection

from image_audit.planning.window import (
    DEFERRED_BY_BUDGET,
    DEFERRED_BY_CREDITS,
    DEFERRED_BY_WINDOW,
    submission_capacity,
    submission_minutes,
)
from image_audit.warehouse.lifecycle import ScanState
from image_audit.warehouse.schema import audit_scans

#: Why a scan waits for a later run, from its ``last_error`` (see ``image_audit.planning``).
BACKLOG_REASONS = ("window", "budget", "credits", "unsent")


def backlog_by_reason(conn: Connection, dag_id: str) -> dict[str, int]:
    """Scans of the DAG waiting for a later run (``pending``, no batch), by the cap that held them back.

    Across the DAG's runs, not only this one: deferred scans keep the run that deferred them until a later
    run adopts them. ``unsent``: released when their run ended before submitting them (no cap involved).
    """
    scan = audit_scans.c
    reason = case(
        (scan.last_error.like(f"{DEFERRED_BY_WINDOW}%"), "window"),
        (scan.last_error.like(f"{DEFERRED_BY_BUDGET}%"), "budget"),
        (scan.last_error.like(f"{DEFERRED_BY_CREDITS}%"), "credits"),
        else_="unsent",
    )
    waiting = (
        select(reason.label("reason"))
        .where(scan.dag_id == dag_id, scan.state == ScanState.PENDING.value, scan.batch_id.is_(None))
        .subquery("waiting")
    )
    counts = dict.fromkeys(BACKLOG_REASONS, 0)
    query = select(waiting.c.reason, func.count()).group_by(waiting.c.reason)
    counts.update({key: int(n) for key, n in conn.execute(query).all()})
    return counts


def backlog_summary(
    by_reason: dict[str, int], requests_per_second: float | None, window_minutes: float | None
) -> dict:
    """The DAG's backlog and when it clears at the account's rate, later runs taking it first.

    ``submission_minutes``: minutes of submission it needs (None: no rate known, or no limit);
    ``runs_to_clear``: windows it needs (1 without a window or without a limit; None: unknown, or a window
    of 0 minutes that never sends it).
    """
    scans = sum(by_reason.values())
    capacity = submission_capacity(requests_per_second, window_minutes)
    minutes = submission_minutes(scans, requests_per_second)
    if requests_per_second is None:
        runs = None
    elif capacity is None:
        runs = 1 if scans else 0
    else:
        runs = math.ceil(scans / capacity) if capacity else None
    return {
        "scans": scans,
        "by_reason": dict(by_reason),
        "requests_per_second": requests_per_second,
        "window_minutes": window_minutes,
        "run_capacity": capacity,
        "submission_minutes": minutes,
        "runs_to_clear": runs,
    }


def _duration(minutes: int) -> str:
    if minutes < 120:
        return f"{minutes:,} minute{'s' if minutes != 1 else ''}"
    return f"{minutes / 60:,.1f} hours"


def describe_backlog(backlog: dict) -> str:
    """One sentence on when the backlog clears (empty when the rate is unknown)."""
    estimate = _estimate(backlog)
    if estimate and backlog["by_reason"].get("budget"):
        estimate += " Those the credit budget held back go only as far as later runs' budgets allow."
    if estimate and backlog["by_reason"].get("credits"):
        estimate += " Those waiting for credits go once the account is topped up."
    return estimate


def _estimate(backlog: dict) -> str:
    rate, window = backlog["requests_per_second"], backlog["window_minutes"]
    capacity, runs = backlog["run_capacity"], backlog["runs_to_clear"]
    if rate is None:
        return ""
    if rate <= 0:
        return "The account has no request limit: the next run submits them all."
    text = f"At {rate:g} requests/s that is about {_duration(backlog['submission_minutes'])} of submission"
    if window is None:
        return f"{text}; the next run submits them all (it has no submission window)."
    if not capacity:
        return f"{text}, but a window of {window:g} minutes submits none."
    each = f"{window:g} minutes, up to {capacity:,} submissions"
    if runs == 1:
        return f"{text}, i.e. within the next run's window ({each})."
    return f"{text}, i.e. the windows of the next {runs:,} runs ({each} each)."
