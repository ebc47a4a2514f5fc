"""The report tests' shared runs: R1 and R2 of the hand-counted scans, reported (SQLite and PostgreSQL)."""

from __future__ import annotations

import pytest

from image_audit.reporting import RunReport, build_run_report
from image_audit.warehouse.engine import get_engine
from tests.support.reports import (
    DAG_ID,
    R1,
    R2,
    ImageFetcher,
    seed_reported_runs,
)


@pytest.fixture
def reports(warehouse_url, tmp_path) -> tuple[RunReport, RunReport, ImageFetcher]:
    engine = get_engine(warehouse_url)
    seed_reported_runs(engine)
    first = build_run_report(engine, DAG_ID, R1, out_dir=tmp_path / "r1", fetch_image=ImageFetcher())
    fetcher = ImageFetcher()
    second = build_run_report(
        engine, DAG_ID, R2, out_dir=tmp_path / "r2", rolling_runs=3, top_n=3, fetch_image=fetcher
    )
    return first, second, fetcher
