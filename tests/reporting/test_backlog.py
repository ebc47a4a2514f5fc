"""The backlog: scans waiting for later runs, and when the account's rate clears them."""

from __future__ import annotations

from sqlalchemy import update

from image_audit.planning.window import DEFERRED_BY_BUDGET, DEFERRED_BY_CREDITS, DEFERRED_BY_WINDOW
from image_audit.reporting import build_run_report
from image_audit.reporting.backlog import backlog_summary, describe_backlog
from image_audit.warehouse.engine import get_engine
from image_audit.warehouse.schema import audit_scans
from tests.support.reports import (
    D1,
    D2,
    DAG_ID,
    R1,
    R2,
    Scan,
    insert_report_scans,
    r2_scans,
)


def _seed_backlog(engine) -> None:
    """R2's scans (``n`` is pending, released unsent) plus scans the caps deferred, in R1 and R2."""
    window = f"{DEFERRED_BY_WINDOW} of 200091 submissions is full"
    budget = f"{DEFERRED_BY_BUDGET} of 100 credits is spent"
    credits = f"{DEFERRED_BY_CREDITS}: 2 credits were available"
    insert_report_scans(engine, r2_scans())
    insert_report_scans(
        engine,
        [
            *[Scan(f"w{i}", "shop", D1, "pending", error=window, run_id=R1) for i in range(3)],
            *[Scan(f"v{i}", "blog", D2, "pending", error=window) for i in range(4)],
            Scan("b0", "shop", D1, "pending", error=budget, run_id=R1),
            Scan("b1", "shop", D2, "pending", error=budget),
            Scan("c0", "blog", D2, "pending", error=credits),
            Scan("in-batch", "shop", D2, "pending"),  # being submitted: not waiting
            Scan("elsewhere", "shop", D2, "pending", error=window),  # another DAG's
        ],
    )
    with engine.begin() as conn:
        conn.execute(
            update(audit_scans).where(audit_scans.c.scan_id == "in-batch-1-r2").values(batch_id="b1")
        )
        conn.execute(
            update(audit_scans).where(audit_scans.c.scan_id == "elsewhere-1-r2").values(dag_id="other_dag")
        )


def test_backlog_and_when_it_clears_at_the_accounts_rate(warehouse_url, tmp_path):
    engine = get_engine(warehouse_url)
    _seed_backlog(engine)
    report = build_run_report(
        engine, DAG_ID, R2, out_dir=tmp_path, top_n=0, requests_per_second=10, window_minutes=360
    )
    backlog = report.summary["backlog"]
    assert backlog == {
        "scans": 11,
        "by_reason": {"window": 7, "budget": 2, "credits": 1, "unsent": 1},
        "requests_per_second": 10,
        "window_minutes": 360,
        "run_capacity": 200_091,
        "submission_minutes": 1,
        "runs_to_clear": 1,
    }
    assert report.summary["backlog_scans"] == 11
    html = report.html_path.read_text()
    section = html[html.index('<section class="backlog"') :].split("</section>")[0]
    assert "<strong>11 images</strong>" in section
    assert "Those waiting for credits go once the account is topped up." in section
    assert "At 10 requests/s that is about 1 minute of submission" in section
    assert "within the next run&#39;s window (360 minutes, up to 200,091 submissions)" in section
    assert "Those the credit budget held back go only as far as later runs' budgets allow" in (
        section.replace("&#39;", "'")
    )
    table = section[section.index("<table") :].replace("&#39;", "'")
    rows = [
        (label, table.index(label))
        for label in ("submission window", "credit budget", "account's credits", "run ending")
    ]
    assert [label for label, _ in sorted(rows, key=lambda r: r[1])] == [label for label, _ in rows]
    assert html.index('id="backlog"') < html.index("<h2>Scan outcomes</h2>")

    # a short window: 5 submissions a run, so three runs; a rebuild without the rate keeps the recorded one
    short = build_run_report(
        engine, DAG_ID, R2, out_dir=tmp_path, top_n=0, requests_per_second=10, window_minutes=0.01
    )
    assert (short.summary["backlog"]["run_capacity"], short.summary["backlog"]["runs_to_clear"]) == (5, 3)
    assert "the windows of the next 3 runs (0.01 minutes, up to 5 submissions each)" in (
        short.html_path.read_text()
    )
    rebuilt = build_run_report(engine, DAG_ID, R2, out_dir=tmp_path, top_n=0)
    assert rebuilt.summary["backlog"] == short.summary["backlog"]


def test_no_backlog_no_section(warehouse_url, tmp_path):
    engine = get_engine(warehouse_url)
    insert_report_scans(engine, [s for s in r2_scans() if s.state != "pending"])
    report = build_run_report(
        engine, DAG_ID, R2, out_dir=tmp_path, top_n=0, requests_per_second=10, window_minutes=360
    )
    assert report.summary["backlog_scans"] == 0
    assert report.summary["backlog"]["by_reason"] == {"window": 0, "budget": 0, "credits": 0, "unsent": 0}
    html = report.html_path.read_text()
    assert "Waiting for later runs" not in html and 'class="backlog"' not in html


def test_backlog_estimates_without_a_window_a_limit_or_a_rate():
    by_reason = {"window": 12_000, "budget": 0, "unsent": 400}
    hours = backlog_summary(by_reason, 10, None)
    assert (hours["submission_minutes"], hours["runs_to_clear"], hours["run_capacity"]) == (23, 1, None)
    assert describe_backlog(hours) == (
        "At 10 requests/s that is about 23 minutes of submission; "
        "the next run submits them all (it has no submission window)."
    )
    slow = backlog_summary(by_reason, 0.5, 360)  # 10,004 a run
    assert slow["runs_to_clear"] == 2 and describe_backlog(slow).startswith(
        "At 0.5 requests/s that is about 7.5 hours of submission, i.e. the windows of the next 2 runs"
    )
    unlimited = backlog_summary(by_reason, 0, 360)
    assert unlimited["run_capacity"] is None and unlimited["runs_to_clear"] == 1
    assert describe_backlog(unlimited) == "The account has no request limit: the next run submits them all."
    unknown = backlog_summary(by_reason, None, 360)
    assert unknown["runs_to_clear"] is None and describe_backlog(unknown) == ""
    closed = backlog_summary(by_reason, 10, 0)
    assert closed["runs_to_clear"] is None and "submits none" in describe_backlog(closed)
    budgeted = backlog_summary({"window": 0, "budget": 400, "unsent": 0}, 10, 360)
    assert describe_backlog(budgeted).endswith("go only as far as later runs' budgets allow.")
