"""The catalog's watermark: how far the audit of a catalog has got, for the runs without an interval of
their own.

A run that follows the watermark (``PlanOptions.follow_watermark``: the runs the catalog's Asset
starts, the nightly one, a manual run without a logical date; ``image_audit.planning.schedule`` decides)
audits the rows ingested in ``[watermark, end)`` and moves the watermark to ``end``; a run whose
``end`` is not past the watermark audits the empty interval there. With no watermark yet (the
catalog's first such run) it starts at ``RunContext.interval_start``, which its caller chooses. Runs
with an interval of their own (backfills, manual runs given a logical date) neither read nor move it.

What a run claimed is a row of ``audit_run_intervals``, and the watermark is the latest end among a
catalog's rows: so the claims of a catalog are contiguous, and no row ingested before the watermark is
left to no run, nor claimed by two. The claim is written in the transaction of the plan's decisions
(``image_audit.planning.plan``), which records it only if the watermark is still where the plan read
it before it staged the interval's rows; otherwise (another plan claimed meanwhile) the plan is made
again from the new watermark. Claims of one catalog are serialised: on PostgreSQL by an advisory lock
held to the end of the transaction, on SQLite by the write lock the plan's decisions take anyway.

A plan made again for the same run (a retried task) finds the run's claim and plans that interval
again, whatever the watermark is by then. A run that reads only part of its interval (a source filter,
a row limit) records its interval too, but does not move the watermark: the rows it did not read are
the next claim's.

The watermark is as good as the catalog's ``ingested_at``: a row must be visible to the plan once the
run's end is past its ``ingested_at`` (stamped when the row lands, in the clock of Airflow's
components: UTC), so a producer updates the Asset after its rows are committed.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from datetime import UTC, datetime

from sqlalchemy import Connection, Engine, func, select, text, true, update

from image_audit.planning.catalog import CatalogSpec
from image_audit.planning.run import PlanOptions, RunContext
from image_audit.warehouse.engine import as_utc
from image_audit.warehouse.schema import audit_run_intervals

__all__ = ["WatermarkClaim", "WatermarkMoved", "catalog_key", "run_interval", "watermark"]


class WatermarkMoved(RuntimeError):
    """Another plan claimed from the catalog's watermark after this plan read it: plan again."""


def catalog_key(spec: CatalogSpec) -> str:
    """The name the watermark of ``spec``'s catalog is kept under: its table (``schema.table``)."""
    return f"{spec.schema}.{spec.table}" if spec.schema else spec.table


def _watermark(conn: Connection, catalog: str) -> datetime | None:
    columns = audit_run_intervals.c
    latest = select(func.max(columns.interval_end)).where(
        columns.catalog == catalog, columns.advances_watermark == true()
    )
    value = conn.execute(latest).scalar_one_or_none()
    return None if value is None else as_utc(value)


def _recorded(conn: Connection, dag_id: str, run_id: str) -> tuple[datetime, datetime] | None:
    columns = audit_run_intervals.c
    row = conn.execute(
        select(columns.interval_start, columns.interval_end).where(
            columns.dag_id == dag_id, columns.run_id == run_id
        )
    ).first()
    return None if row is None else (as_utc(row.interval_start), as_utc(row.interval_end))


def watermark(engine: Engine, catalog: str) -> datetime | None:
    """The watermark of ``catalog`` (``catalog_key``): every row it ingested before it has been claimed
    by a run. ``None`` before the catalog's first run that follows it."""
    with engine.connect() as conn:
        return _watermark(conn, catalog)


def run_interval(engine: Engine, dag_id: str, run_id: str) -> tuple[datetime, datetime] | None:
    """The interval the run claimed from its catalog's watermark; ``None`` for a run that has not (yet)
    claimed one, or that has an interval of its own."""
    with engine.connect() as conn:
        return _recorded(conn, dag_id, run_id)


def _lock_key(catalog: str) -> int:
    """The PostgreSQL advisory lock of ``catalog``'s watermark (a signed 64-bit key)."""
    digest = hashlib.sha256(f"image_audit.watermark\x1f{catalog}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def _lock(conn: Connection, catalog: str) -> None:
    """Wait for, then hold to the end of the transaction, the right to claim from ``catalog``'s
    watermark; what was committed before it was granted is what the transaction then reads."""
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _lock_key(catalog)})
    else:  # SQLite: the write lock (a write of no row), if the transaction does not hold it yet
        intervals = audit_run_intervals.c
        conn.execute(update(audit_run_intervals).where(intervals.dag_id.is_(None)).values(catalog=catalog))


@dataclass(frozen=True)
class WatermarkClaim:
    """A run's claim on its catalog's watermark, as its plan makes it: :meth:`interval` before the plan
    stages the rows, :meth:`take` in the transaction of the plan's decisions.

    ``run``: the run as its caller gave it, ``interval_end`` its end and ``interval_start`` where the
    catalog's first claim starts. ``advances``: False for a run that reads only part of its interval.
    """

    catalog: str
    run: RunContext
    advances: bool = True

    @classmethod
    def of(cls, spec: CatalogSpec, run: RunContext, options: PlanOptions) -> WatermarkClaim:
        """The claim of ``run`` on the watermark of ``spec``'s catalog with these options."""
        return cls(catalog_key(spec), run, advances=not (options.source_filter or options.limit))

    def interval(self, conn: Connection) -> RunContext:
        """The run with the interval to plan: the one it claimed already (a plan made again), else from
        the watermark (or the first start) to its end, never past now and never before its start."""
        run = self.run
        with conn.begin():
            recorded = _recorded(conn, run.dag_id, run.run_id)
            if recorded is not None:
                start, end = recorded
            else:
                start = _watermark(conn, self.catalog) or as_utc(run.interval_start)
                end = max(start, min(as_utc(run.interval_end), datetime.now(UTC)))
        return replace(run, interval_start=start, interval_end=end)

    def take(self, conn: Connection, staged: RunContext) -> None:
        """Record the claim of ``staged`` (the run as :meth:`interval` gave it, whose rows the plan
        staged), moving the watermark to its end; in the transaction of the plan's decisions, before
        they are written. ``WatermarkMoved`` when the run should claim from elsewhere now."""
        run, interval = self.run, (staged.interval_start, staged.interval_end)
        _lock(conn, self.catalog)
        recorded = _recorded(conn, run.dag_id, run.run_id)
        if recorded is not None:
            if recorded != interval:
                raise WatermarkMoved(f"run {run.run_id} claimed [{recorded[0]}, {recorded[1]}) meanwhile")
            return
        if self.advances:
            start = _watermark(conn, self.catalog) or as_utc(run.interval_start)
            if start != staged.interval_start:
                raise WatermarkMoved(
                    f"the watermark of {self.catalog} moved from {staged.interval_start} to {start} "
                    f"while run {run.run_id} planned"
                )
        conn.execute(
            audit_run_intervals.insert().values(
                dag_id=run.dag_id,
                run_id=run.run_id,
                catalog=self.catalog,
                interval_start=staged.interval_start,
                interval_end=staged.interval_end,
                advances_watermark=self.advances,
                created_at=datetime.now(UTC),
            )
        )
