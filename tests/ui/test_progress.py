"""A run's progress as the tab and the deadline alert tell it (``image_audit.ui.progress``), read from a
seeded warehouse on SQLite and PostgreSQL: the figures, the measured rates and the expected finish."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from image_audit.planning.window import submission_minutes
from image_audit.ui.progress import read_run_progress, utc_text
from image_audit.warehouse.engine import get_engine
from image_audit.warehouse.lifecycle import ScanState
from tests.support.factories import DAG_ID, insert_scans, run_scans

RUN = "scheduled__2026-11-21T00:00:00+00:00"
S = ScanState


def test_a_submitting_run_is_estimated_at_the_budget_when_it_sent_nothing_lately(warehouse_url):
    long_ago = datetime.now(UTC) - timedelta(minutes=10)  # outside both measuring windows
    rows = [
        *run_scans(RUN, S.PENDING, 4),
        *run_scans(RUN, S.SUBMITTED, 5, submitted_at=long_ago),
        *run_scans(RUN, S.COMPLETED, 3, submitted_at=long_ago, completed_at=long_ago),
        *run_scans(RUN, S.FAILED, 1, submitted_at=long_ago, completed_at=long_ago),
        *run_scans(RUN, S.TIMED_OUT, 1, submitted_at=long_ago),
        *run_scans(RUN, S.REJECTED, 2),
    ]
    insert_scans(warehouse_url, rows)
    progress = read_run_progress(get_engine(warehouse_url), DAG_ID, RUN, budget=10.0)
    assert progress.rows() == {
        "Planned": 16,
        "Submitted": 10,
        "Completed": 3,
        "Failed": 1,
        "Timed out": 1,
        "Rejected (never sent)": 2,
        "Remaining": 9,
    }
    assert (progress.pending, progress.awaiting_results) == (4, 5)
    assert progress.submission_rate is None and progress.outcome_rate is None
    minutes = submission_minutes(4, 10.0)
    assert progress.expected_finish == progress.at + timedelta(minutes=minutes)
    assert progress.rate_line() == "No submission in the last minute (the account's budget: 10 requests/s)."
    assert progress.outlook() == (
        f"4 scans to submit at 10 requests/s: about {minutes} min, expected to finish around "
        f"{utc_text(progress.expected_finish)} (results arrive by webhook shortly after)."
    )
    figures = progress.as_dict()
    assert figures["remaining"] == 9 and figures["to_submit"] == 4 and figures["awaiting_results"] == 5
    assert figures["expected_finish"] == progress.expected_finish.isoformat()


def test_with_every_scan_sent_the_finish_follows_the_results_arriving(warehouse_url):
    now = datetime.now(UTC)
    sent = now - timedelta(minutes=10)
    rows = [*run_scans(RUN, S.SUBMITTED, 6, submitted_at=sent)]
    # 4 results over the last 100 s: the first 100 s ago
    for i, ago in enumerate((100, 80, 60, 40)):
        arrived = now - timedelta(seconds=ago)
        rows += run_scans(RUN, S.COMPLETED, 1, tag=str(i), submitted_at=sent, completed_at=arrived)
    insert_scans(warehouse_url, rows)
    progress = read_run_progress(get_engine(warehouse_url), DAG_ID, RUN, budget=10.0)
    took = (progress.at - now).total_seconds()
    assert 4 / (100 + took) - 1e-9 <= progress.outcome_rate <= 4 / 100 + 1e-9, (progress.outcome_rate, took)
    assert progress.pending == 0 and progress.remaining == progress.awaiting_results == 6
    assert progress.expected_finish == progress.at + timedelta(seconds=6 / progress.outcome_rate)
    assert progress.outlook() == (
        f"Every scan is submitted; 6 results are still to arrive by webhook, arriving at "
        f"{progress.outcome_rate:.3g}/s over the last 5 minutes: expected around "
        f"{utc_text(progress.expected_finish)}."
    )


def test_results_that_stopped_arriving_leave_the_finish_unknown(warehouse_url):
    long_ago = datetime.now(UTC) - timedelta(minutes=10)
    rows = [
        *run_scans(RUN, S.SUBMITTED, 6, submitted_at=long_ago),
        *run_scans(RUN, S.COMPLETED, 2, submitted_at=long_ago, completed_at=long_ago),
    ]
    insert_scans(warehouse_url, rows)
    progress = read_run_progress(get_engine(warehouse_url), DAG_ID, RUN, budget=10.0)
    assert progress.outcome_rate is None and progress.expected_finish is None
    assert progress.outlook() == (
        "Every scan is submitted; 6 results are still to arrive by webhook, and none arrived in the last "
        "5 minutes."
    )
    # another run's scans are not this run's
    other = read_run_progress(get_engine(warehouse_url), DAG_ID, "manual__other", budget=10.0)
    assert other.planned == 0 and other.expected_finish is None
    assert other.outlook().startswith("No scans are recorded for this run yet")


def test_an_account_without_a_request_limit_gives_no_submission_estimate(sqlite_warehouse_url):
    insert_scans(sqlite_warehouse_url, run_scans(RUN, S.PENDING, 3))
    progress = read_run_progress(get_engine(sqlite_warehouse_url), DAG_ID, RUN, budget=0)
    assert progress.expected_finish is None
    no_limit = "No submission in the last minute (the account's budget: no request limit)."
    assert progress.rate_line() == no_limit
    assert progress.outlook() == "3 scans to submit (the account has no request limit)."
