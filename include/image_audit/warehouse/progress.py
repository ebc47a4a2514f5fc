"""How far each DAG run's scans have got: polled by the trigger (async), closed by the wait and the report
(sync).

A run waits only for its ``submitted`` scans: Copyleaks owes each of them a callback. ``pending`` scans
are not waited for: once the submit tasks are done, a scan still ``pending`` was held back on purpose
(the budget guard) or failed to submit, and a later run adopts it (``release_unsubmitted``).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from itertools import islice

from sqlalchemy import Connection, Engine, and_, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from image_audit.warehouse.engine import as_utc
from image_audit.warehouse.lifecycle import ScanState
from image_audit.warehouse.schema import audit_scans

RunKey = tuple[str, str]  # (dag_id, run_id)

#: The state of a scan whose result Copyleaks still owes us: what the wait is for.
AWAITING_CALLBACK = ScanState.SUBMITTED

#: Runs per statement in ``waiting_counts_by_run`` (keeps the statement and its bind list small).
_RUNS_PER_QUERY = 200


# --- one run's scans, by state ------------------------------------------------------------------------


def _state_counts_query(dag_id: str, run_id: str):
    return (
        select(audit_scans.c.state, func.count())
        .where(audit_scans.c.dag_id == dag_id, audit_scans.c.run_id == run_id)
        .group_by(audit_scans.c.state)
    )  # index-only on ix_audit_scans_run_state


async def count_scan_states(
    conn_or_engine: AsyncConnection | AsyncEngine, dag_id: str, run_id: str
) -> dict[str, int]:
    """``{state: scans}`` of one run (states without scans are left out)."""
    if isinstance(conn_or_engine, AsyncEngine):
        async with conn_or_engine.connect() as conn:
            return await count_scan_states(conn, dag_id, run_id)
    result = await conn_or_engine.execute(_state_counts_query(dag_id, run_id))
    return {state: n for state, n in result.all()}


def count_scan_states_sync(conn_or_engine: Connection | Engine, dag_id: str, run_id: str) -> dict[str, int]:
    """``{state: scans}`` of one run, for sync callers (the wait operator, the UI tab)."""
    if isinstance(conn_or_engine, Engine):
        with conn_or_engine.connect() as conn:
            return count_scan_states_sync(conn, dag_id, run_id)
    return {state: n for state, n in conn_or_engine.execute(_state_counts_query(dag_id, run_id)).all()}


def recent_submission_rate_sync(
    conn_or_engine: Connection | Engine, dag_id: str, run_id: str, *, window_seconds: float = 60.0
) -> float | None:
    """The run's measured submissions per second over the last ``window_seconds``; None if it sent none.

    Counted from ``submitted_at`` over the span since the window's first submission, so a run that
    began submitting 10 s ago at 10/s reads 10/s, not 10 s' worth averaged over a minute.
    """
    return _recent_rate_sync(conn_or_engine, dag_id, run_id, audit_scans.c.submitted_at, window_seconds)


def recent_outcome_rate_sync(
    conn_or_engine: Connection | Engine, dag_id: str, run_id: str, *, window_seconds: float = 300.0
) -> float | None:
    """The run's measured outcomes (results and error callbacks stored) per second over the last
    ``window_seconds``, counted like :func:`recent_submission_rate_sync` from ``completed_at``; None if
    none arrived."""
    return _recent_rate_sync(conn_or_engine, dag_id, run_id, audit_scans.c.completed_at, window_seconds)


def _recent_rate_sync(
    conn_or_engine: Connection | Engine, dag_id: str, run_id: str, column, window_seconds: float
) -> float | None:
    if isinstance(conn_or_engine, Engine):
        with conn_or_engine.connect() as conn:
            return _recent_rate_sync(conn, dag_id, run_id, column, window_seconds)
    now = datetime.now(UTC)
    query = select(func.count(), func.min(column)).where(
        audit_scans.c.dag_id == dag_id,
        audit_scans.c.run_id == run_id,
        column >= now - timedelta(seconds=window_seconds),
    )
    events, first = conn_or_engine.execute(query).one()
    if not events:
        return None
    return events / max((now - as_utc(first)).total_seconds(), 1.0)


def waiting(counts: dict[str, int]) -> int:
    """Scans of a run (``{state: scans}``) still awaiting their Copyleaks callback."""
    return counts.get(AWAITING_CALLBACK.value, 0)


# --- many runs at once (the trigger's shared poll) ----------------------------------------------------


async def waiting_counts_by_run(
    engine: AsyncEngine, runs: Iterable[RunKey] | None = None
) -> dict[RunKey, int]:
    """Scans awaiting their callback, per run, in one query per up to 200 runs.

    ``runs`` given: every one of them is in the answer, ``0`` when nothing of it waits any more (an
    index range per run on ``ix_audit_scans_run_state``, so the cost follows the waiting scans of
    those runs, not the size of the table). ``runs=None``: every run that has waiting scans.
    """
    awaiting = audit_scans.c.state == AWAITING_CALLBACK.value
    query = (
        select(audit_scans.c.dag_id, audit_scans.c.run_id, func.count())
        .where(awaiting)
        .group_by(audit_scans.c.dag_id, audit_scans.c.run_id)
    )
    async with engine.connect() as conn:
        if runs is None:
            return {(dag_id, run_id): n for dag_id, run_id, n in (await conn.execute(query)).all()}
        counts: dict[RunKey, int] = defaultdict(int)
        runs = iter(dict.fromkeys(runs))
        while chunk := list(islice(runs, _RUNS_PER_QUERY)):
            counts.update(dict.fromkeys(chunk, 0))
            of_runs = or_(*(and_(audit_scans.c.dag_id == d, audit_scans.c.run_id == r) for d, r in chunk))
            for dag_id, run_id, n in (await conn.execute(query.where(of_runs))).all():
                counts[(dag_id, run_id)] = n
        return dict(counts)


# --- closing a run ------------------------------------------------------------------------------------


def _update_run_scans(engine: Engine, dag_id: str, run_id: str, *conditions, **values) -> int:
    with engine.begin() as conn:
        result = conn.execute(
            update(audit_scans)
            .where(audit_scans.c.dag_id == dag_id, audit_scans.c.run_id == run_id, *conditions)
            .values(updated_at=datetime.now(UTC), **values)
        )
    return result.rowcount


def mark_timed_out(engine: Engine, dag_id: str, run_id: str, reason: str) -> int:
    """Turn the run's scans still awaiting a callback into ``timed_out`` (a later run retries them).

    One UPDATE guarded by the state, so a result the receiver commits concurrently is never
    overwritten (that scan stays ``completed``/``failed``); a callback arriving later still completes
    the scan. Returns how many scans timed out.
    """
    awaiting = audit_scans.c.state == AWAITING_CALLBACK.value
    return _update_run_scans(
        engine, dag_id, run_id, awaiting, state=ScanState.TIMED_OUT.value, last_error=reason
    )


def release_unsubmitted(engine: Engine, dag_id: str, run_id: str) -> int:
    """Let a later run adopt this run's never-submitted scans (the run ended, e.g. out of credits)."""
    unsent = (audit_scans.c.state == ScanState.PENDING.value, audit_scans.c.batch_id.is_not(None))
    return _update_run_scans(engine, dag_id, run_id, *unsent, batch_id=None)
