"""Scan state transitions made by the submit task (the receiver and the wait own the others:
``image_audit.warehouse.lifecycle``)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import TypeVar

from sqlalchemy import Engine, bindparam, select, update

from copyleaks_provider.retries import outage_retrying
from image_audit.warehouse.lifecycle import ScanState
from image_audit.warehouse.results import UNAVAILABLE_ERRORS
from image_audit.warehouse.schema import audit_scans

log = logging.getLogger(__name__)

#: How long the submit task's reads and writes ride out a warehouse outage (a network blip, a
#: failover) before the error fails the task's try: a few seconds' outage costs no Airflow retry.
OUTAGE_RETRY_SECONDS = 30.0

T = TypeVar("T")


def _riding_out_outages(action: Callable[[], T]) -> T:
    """``action()``, tried again (0.5 s, 1 s, 2 s ... 5 s apart) while the warehouse is unreachable, for
    up to ``OUTAGE_RETRY_SECONDS``. Safe: each action is one read or one transaction of conditional
    updates, so a retry after a commit whose answer was lost changes nothing."""
    return outage_retrying(UNAVAILABLE_ERRORS, OUTAGE_RETRY_SECONDS, log)(action)


def load_unsent_scans(engine: Engine, batch_id: str) -> list[dict]:
    """The batch's scans still ``pending``: a retried task resumes exactly where the last try stopped."""
    query = (
        select(
            audit_scans.c.scan_id,
            audit_scans.c.image_id,
            audit_scans.c.url,
            audit_scans.c.file_name,
            audit_scans.c.model,
            audit_scans.c.sandbox,
            audit_scans.c.fetch_headers_ref,
        )
        .where(audit_scans.c.batch_id == batch_id, audit_scans.c.state == ScanState.PENDING.value)
        .order_by(audit_scans.c.scan_id)
    )

    def load() -> list[dict]:
        with engine.connect() as conn:
            return [dict(row) for row in conn.execute(query).mappings()]

    return _riding_out_outages(load)


def record_transitions(engine: Engine, changes: Iterable[tuple[str, ScanState, str | None]]) -> int:
    """Move ``pending`` scans to ``submitted`` or ``rejected`` in one statement per state.

    Only ``pending`` rows change: a webhook that raced ahead of this write (the scan is already
    ``completed``) is never overwritten.
    """
    now = datetime.now(UTC)
    rows = [
        {
            "b_scan_id": scan_id,
            "b_state": state.value,
            "b_error": error,
            "b_submitted_at": now if state == ScanState.SUBMITTED else None,
        }
        for scan_id, state, error in changes
    ]
    if not rows:
        return 0
    statement = (
        update(audit_scans)
        .where(
            audit_scans.c.scan_id == bindparam("b_scan_id"), audit_scans.c.state == ScanState.PENDING.value
        )
        .values(
            state=bindparam("b_state"),
            last_error=bindparam("b_error"),
            submitted_at=bindparam("b_submitted_at"),
            updated_at=now,
        )
    )

    def write() -> None:
        with engine.begin() as conn:
            conn.execute(statement, rows)

    _riding_out_outages(write)
    return len(rows)


def record_submit_error(engine: Engine, scan_ids: Iterable[str], error: str) -> None:
    """Note a transient failure on scans that stay ``pending`` (the task's retry resubmits them)."""
    ids = list(scan_ids)
    if not ids:
        return
    statement = (
        update(audit_scans)
        .where(audit_scans.c.scan_id.in_(ids), audit_scans.c.state == ScanState.PENDING.value)
        .values(last_error=error, updated_at=datetime.now(UTC))
    )

    def write() -> None:
        with engine.begin() as conn:
            conn.execute(statement)

    _riding_out_outages(write)
