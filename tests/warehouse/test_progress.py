"""How far each run's scans have got (``image_audit.warehouse.progress``), on SQLite and PostgreSQL."""

from __future__ import annotations

from image_audit.warehouse.engine import create_async_warehouse_engine
from image_audit.warehouse.lifecycle import ScanState
from image_audit.warehouse.progress import count_scan_states, waiting_counts_by_run
from tests.support.factories import DAG_ID
from tests.support.triggers import seed


async def test_progress_queries(warehouse_url):
    seed(warehouse_url, "run-a", {ScanState.SUBMITTED: 3, ScanState.COMPLETED: 2, ScanState.PENDING: 1})
    seed(warehouse_url, "run-b", {ScanState.COMPLETED: 1})
    engine = create_async_warehouse_engine(warehouse_url)
    try:
        assert await count_scan_states(engine, DAG_ID, "run-a") == {
            "submitted": 3,
            "completed": 2,
            "pending": 1,
        }
        runs = [(DAG_ID, "run-a"), (DAG_ID, "run-b"), ("other", "run-a")]
        assert await waiting_counts_by_run(engine, runs) == dict(zip(runs, [3, 0, 0], strict=True))
        assert await waiting_counts_by_run(engine) == {(DAG_ID, "run-a"): 3}
    finally:
        await engine.dispose()
