"""Planning against a real warehouse: what a run submits, rejects, skips, adopts and retries."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Column, DateTime, MetaData, String, Table, Text, func, select, update

from copyleaks_provider.scan_ids import make_scan_id
from image_audit.planning import PlanOptions, RunContext, plan_run
from image_audit.planning.catalog import CatalogSpec, read_catalog
from image_audit.planning.window import submission_capacity
from image_audit.reporting.backlog import backlog_by_reason
from image_audit.warehouse.lifecycle import ScanState
from image_audit.warehouse.progress import release_unsubmitted
from image_audit.warehouse.schema import audit_batches, audit_scans, image_catalog

DAY = datetime(2026, 11, 23, tzinfo=UTC)
MODEL = "ai-image-1-ultra"


def _run(run_id: str = "run-1", day: datetime = DAY) -> RunContext:
    return RunContext("image_catalog_audit", run_id, day, day + timedelta(days=1))


def _rows(n: int, day: datetime = DAY, prefix: str = "img") -> list[dict]:
    return [
        {
            "image_id": f"{prefix}-{i:04d}",
            "url": f"https://cdn.example.com/{prefix}/{i:04d}.jpg",
            "file_name": f"{prefix}-{i:04d}.jpg",
            "source": "partner-feed" if i % 2 else "stock",
            "ingested_at": day + timedelta(minutes=i),
        }
        for i in range(n)
    ]


def _scans(engine, **where) -> list[dict]:
    query = select(audit_scans)
    for key, value in where.items():
        query = query.where(audit_scans.c[key] == value)
    with engine.connect() as conn:
        return [dict(r) for r in conn.execute(query).mappings()]


def _seed(engine, rows):
    columns = [c.name for c in image_catalog.columns]
    with engine.begin() as conn:
        conn.execute(image_catalog.insert(), [{c: row.get(c) for c in columns} for row in rows])


def test_plans_interval_rows_into_batches(engine):
    _seed(engine, _rows(25) + _rows(3, day=DAY + timedelta(days=1), prefix="next-day"))
    plan = plan_run(engine, CatalogSpec(), _run(), PlanOptions(model=MODEL, batch_size=10))

    assert plan.planned == 25 and plan.new == 25 and len(plan.batch_ids) == 3
    scans = _scans(engine, run_id="run-1")
    assert len(scans) == 25
    assert {s["state"] for s in scans} == {"pending"}
    assert {s["scan_id"] for s in scans} == {make_scan_id(f"img-{i:04d}", MODEL) for i in range(25)}
    with engine.connect() as conn:
        sizes = sorted(conn.execute(select(audit_batches.c.size)).scalars())
    assert sizes == [5, 10, 10]


def test_bad_rows_are_rejected_with_their_reason(engine):
    rows = _rows(3)
    late = DAY + timedelta(hours=1)  # ingested after the rows they duplicate: the first one wins
    rows += [
        {"image_id": "no-url", "url": None, "file_name": "x.jpg", "ingested_at": late},
        {"image_id": "ftp", "url": "ftp://host/a.jpg", "file_name": "a.jpg", "ingested_at": late},
        {"image_id": "gif", "url": "https://host/a.gif", "file_name": "a.gif", "ingested_at": late},
        {"image_id": "dup-url", "url": rows[0]["url"], "file_name": "d.jpg", "ingested_at": late},
    ]
    _seed(engine, rows)
    plan = plan_run(engine, CatalogSpec(), _run(), PlanOptions(model=MODEL))

    assert plan.planned == 3 and plan.rejected == 4
    reasons = {s["image_id"]: s["last_error"] for s in _scans(engine, state="rejected")}
    assert reasons["no-url"] == "missing URL"
    assert "scheme" in reasons["ftp"]
    assert ".gif" in reasons["gif"]
    assert reasons["dup-url"] == "duplicate URL: same image as img-0000"


def test_rerun_plans_nothing_new_and_keeps_one_row_per_image(engine):
    _seed(engine, _rows(12))
    first = plan_run(engine, CatalogSpec(), _run(), PlanOptions(model=MODEL, batch_size=5))
    again = plan_run(engine, CatalogSpec(), _run(), PlanOptions(model=MODEL, batch_size=5))

    assert again.batch_ids == first.batch_ids and again.new == 0 and again.in_progress == 12
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(audit_scans)).scalar_one() == 12
        assert conn.execute(select(func.count()).select_from(audit_batches)).scalar_one() == 3


def test_completed_images_are_skipped_unless_forced(engine):
    _seed(engine, _rows(4))
    plan_run(engine, CatalogSpec(), _run(), PlanOptions(model=MODEL))
    with engine.begin() as conn:
        conn.execute(update(audit_scans).values(state=ScanState.COMPLETED.value))

    skipped = plan_run(engine, CatalogSpec(), _run("run-2"), PlanOptions(model=MODEL))
    assert skipped.planned == 0 and skipped.already_scanned == 4

    forced = plan_run(engine, CatalogSpec(), _run("run-3"), PlanOptions(model=MODEL, force_rescan=True))
    assert forced.planned == 4 and forced.retried == 4
    assert {s["attempt"] for s in _scans(engine, run_id="run-3")} == {2}


def test_budget_guard_defers_the_rest_to_a_later_run(engine):
    _seed(engine, _rows(10))
    plan = plan_run(engine, CatalogSpec(), _run(), PlanOptions(model=MODEL, max_credits=4))
    assert plan.planned == 4 and plan.deferred_by_budget == 6
    deferred = [s for s in _scans(engine) if s["batch_id"] is None]
    assert len(deferred) == 6 and all("budget" in s["last_error"] for s in deferred)

    # The next night's run (another interval, no budget) adopts the deferred scans with their ids.
    later = plan_run(engine, CatalogSpec(), _run("run-2", DAY + timedelta(days=1)), PlanOptions(model=MODEL))
    assert later.planned == 6 and later.resumed == 6
    adopted = _scans(engine, run_id="run-2")
    assert {s["scan_id"] for s in adopted} == {s["scan_id"] for s in deferred}


def test_the_accounts_credits_cap_the_run_and_say_so_when_they_are_the_tightest_cap(engine):
    _seed(engine, _rows(10))
    options = PlanOptions(model=MODEL, max_credits=8, credit_balance=3, max_submissions=5)
    plan = plan_run(engine, CatalogSpec(), _run(), options)
    assert (plan.planned, plan.deferred_by_credits, plan.deferred_by_budget, plan.deferred_by_window) == (
        3,
        7,
        0,
        0,
    )
    waiting = [s for s in _scans(engine) if s["batch_id"] is None]
    assert len(waiting) == 7
    assert {s["last_error"] for s in waiting} == {"deferred: the account's credits: 3 credits were available"}
    # the backlog counts them apart, for the report
    with engine.connect() as conn:
        assert backlog_by_reason(conn, "image_catalog_audit")["credits"] == 7


def test_a_tighter_budget_is_named_rather_than_the_accounts_credits(engine):
    _seed(engine, _rows(5))
    plan = plan_run(engine, CatalogSpec(), _run(), PlanOptions(model=MODEL, max_credits=2, credit_balance=2))
    assert (plan.planned, plan.deferred_by_budget, plan.deferred_by_credits) == (2, 3, 0)


def _deferred(engine) -> list[dict]:
    return [s for s in _scans(engine, state="pending") if s["batch_id"] is None]


def test_window_cap_defers_the_rest_and_counts_them_apart_from_the_budget(engine):
    _seed(engine, _rows(10))
    plan = plan_run(engine, CatalogSpec(), _run(), PlanOptions(model=MODEL, max_submissions=3))
    assert plan.planned == 3 and plan.deferred_by_window == 7 and plan.deferred_by_budget == 0
    # catalog order: the oldest ingestions are sent, the rest wait with the window as their reason
    sent = {s["image_id"] for s in _scans(engine) if s["batch_id"] is not None}
    assert sent == {"img-0000", "img-0001", "img-0002"}
    deferred = _deferred(engine)
    assert len(deferred) == 7 and all("submission window of 3" in s["last_error"] for s in deferred)

    later = plan_run(engine, CatalogSpec(), _run("run-2", DAY + timedelta(days=1)), PlanOptions(model=MODEL))
    assert later.planned == 7 and later.resumed == 7 and later.deferred_by_window == 0
    assert {s["scan_id"] for s in _scans(engine, run_id="run-2")} == {s["scan_id"] for s in deferred}
    assert all(s["last_error"] is None for s in _scans(engine, run_id="run-2"))


def test_leftovers_go_first_and_the_backlog_drains_before_new_rows(engine):
    _seed(engine, _rows(6))
    plan_run(engine, CatalogSpec(), _run(), PlanOptions(model=MODEL, max_submissions=2))  # 4 deferred
    next_day = DAY + timedelta(days=1)
    _seed(engine, _rows(5, day=next_day, prefix="new"))

    second = plan_run(
        engine, CatalogSpec(), _run("run-2", next_day), PlanOptions(model=MODEL, max_submissions=3)
    )
    assert second.resumed == 3 and second.new == 5 and second.planned == 3
    assert second.deferred_by_window == 1 + 5
    batched = {s["image_id"] for s in _scans(engine, run_id="run-2") if s["batch_id"]}
    assert batched == {"img-0002", "img-0003", "img-0004"}  # yesterday's backlog, oldest first

    third = plan_run(
        engine, CatalogSpec(), _run("run-3", next_day + timedelta(days=1)), PlanOptions(model=MODEL)
    )
    assert third.resumed == 6 and third.planned == 6 and not _deferred(engine)
    assert {s["image_id"] for s in _scans(engine, run_id="run-3")} == {"img-0005"} | {
        f"new-{i:04d}" for i in range(5)
    }


def test_both_caps_whichever_is_spent_first(engine):
    _seed(engine, _rows(10))
    plan = plan_run(engine, CatalogSpec(), _run(), PlanOptions(model=MODEL, max_credits=6, max_submissions=4))
    assert plan.planned == 4 and plan.deferred_by_window == 6 and plan.deferred_by_budget == 0

    _seed(engine, _rows(4, day=DAY + timedelta(days=1), prefix="new"))
    later = plan_run(
        engine,
        CatalogSpec(),
        _run("run-2", DAY + timedelta(days=1)),
        PlanOptions(model=MODEL, max_credits=3, max_submissions=5),
    )
    # the budget is spent first; with both spent the budget is the reason (a longer window sends nothing)
    assert later.planned == 3 and later.resumed == 3
    assert later.deferred_by_budget == 3 + 4 and later.deferred_by_window == 0
    reasons = {s["image_id"]: s["last_error"] for s in _deferred(engine)}
    assert len(reasons) == 7 and all("budget of 3 credits" in r for r in reasons.values())

    equal = plan_run(
        engine,
        CatalogSpec(),
        _run("run-3", DAY + timedelta(days=2)),
        PlanOptions(model=MODEL, max_credits=2, max_submissions=2),
    )
    assert equal.planned == 2 and equal.deferred_by_budget == 5 and equal.deferred_by_window == 0


def test_deferred_timed_out_retry_waits_as_a_pending_attempt(engine):
    _seed(engine, _rows(3))
    plan_run(engine, CatalogSpec(), _run(), PlanOptions(model=MODEL))
    with engine.begin() as conn:
        conn.execute(update(audit_scans).values(state=ScanState.TIMED_OUT.value))
    next_day = DAY + timedelta(days=1)
    plan = plan_run(
        engine, CatalogSpec(), _run("run-2", next_day), PlanOptions(model=MODEL, max_submissions=1)
    )
    assert plan.retried == 1 and plan.deferred_by_window == 2
    waiting = _deferred(engine)
    assert {s["attempt"] for s in waiting} == {2} and len(waiting) == 2
    later = plan_run(engine, CatalogSpec(), _run("run-3", next_day), PlanOptions(model=MODEL))
    assert later.resumed == 2 and later.retried == 0 and later.planned == 2


def test_a_reingested_leftover_is_planned_once_not_rejected(engine):
    _seed(engine, _rows(2))
    plan_run(engine, CatalogSpec(), _run(), PlanOptions(model=MODEL, max_submissions=0))
    # a rerun of the same interval by another run: the catalog rows are the leftovers themselves
    again = plan_run(engine, CatalogSpec(), _run("run-2"), PlanOptions(model=MODEL))
    assert again.resumed == 2 and again.planned == 2 and again.rejected == 0 and again.new == 0
    assert not _scans(engine, state="rejected")


def test_no_window_or_rate_zero_means_no_cap(engine):
    assert submission_capacity(0, 360) is None and submission_capacity(None, 360) is None
    assert submission_capacity(10, None) is None
    _seed(engine, _rows(5))
    plan = plan_run(
        engine, CatalogSpec(), _run(), PlanOptions(model=MODEL, max_submissions=submission_capacity(0, 1))
    )
    assert plan.planned == 5 and plan.deferred_by_window == 0


def test_adopted_and_new_scans_fill_the_same_batches(engine):
    _seed(engine, _rows(6))
    plan_run(engine, CatalogSpec(), _run(), PlanOptions(model=MODEL, max_credits=0))  # all deferred
    _seed(engine, _rows(5, day=DAY + timedelta(days=1), prefix="new"))

    later = plan_run(
        engine, CatalogSpec(), _run("run-2", DAY + timedelta(days=1)), PlanOptions(model=MODEL, batch_size=4)
    )
    assert later.planned == 11 and later.new == 5 and later.resumed == 6 and len(later.batch_ids) == 3
    scans = _scans(engine, run_id="run-2")
    assert len(scans) == 11 and {s["batch_id"] for s in scans} == set(later.batch_ids)
    with engine.connect() as conn:
        sizes = dict(conn.execute(select(audit_batches.c.batch_id, audit_batches.c.size)).all())
    assert sorted(sizes.values()) == [3, 4, 4]
    for batch_id, size in sizes.items():
        assert size == sum(s["batch_id"] == batch_id for s in scans)


def test_timed_out_scans_get_a_new_attempt_up_to_the_maximum(engine):
    _seed(engine, _rows(2))
    plan_run(engine, CatalogSpec(), _run(), PlanOptions(model=MODEL))
    next_day = DAY + timedelta(days=1)
    for attempt, run_id in [(2, "run-2"), (3, "run-3")]:
        with engine.begin() as conn:
            conn.execute(update(audit_scans).values(state=ScanState.TIMED_OUT.value))
        plan = plan_run(
            engine, CatalogSpec(), _run(run_id, next_day), PlanOptions(model=MODEL, max_attempts=3)
        )
        assert plan.retried == 2
        assert {s["scan_id"] for s in _scans(engine, run_id=run_id)} == {
            make_scan_id(f"img-{i:04d}", MODEL, attempt) for i in range(2)
        }
    with engine.begin() as conn:
        conn.execute(update(audit_scans).values(state=ScanState.TIMED_OUT.value))
    exhausted = plan_run(
        engine, CatalogSpec(), _run("run-4", next_day), PlanOptions(model=MODEL, max_attempts=3)
    )
    assert exhausted.planned == 0 and exhausted.exhausted == 2


def test_released_scans_are_adopted_by_the_next_run(engine):
    _seed(engine, _rows(3))
    plan_run(engine, CatalogSpec(), _run(), PlanOptions(model=MODEL))
    assert release_unsubmitted(engine, "image_catalog_audit", "run-1") == 3
    later = plan_run(engine, CatalogSpec(), _run("run-2", DAY + timedelta(days=1)), PlanOptions(model=MODEL))
    assert later.resumed == 3 and later.planned == 3


def test_a_team_catalog_with_its_own_names(engine):
    team = Table(
        "team_assets",
        MetaData(),
        Column("asset_key", String, primary_key=True),
        Column("public_url", String),
        Column("landed_at", DateTime(timezone=True)),
        Column("feed", String),
    )
    team.create(engine)
    with engine.begin() as conn:
        conn.execute(
            team.insert(),
            [
                {"asset_key": "a1", "public_url": "https://h/a1.png", "landed_at": DAY, "feed": "x"},
                {"asset_key": "a2", "public_url": "https://h/a2.webp", "landed_at": DAY, "feed": "y"},
            ],
        )
    spec = CatalogSpec.from_dict(
        {
            "table": "team_assets",
            "image_id": "asset_key",
            "url": "public_url",
            "ingested_at": "landed_at",
            "source": "feed",
            "file_name": None,
            "fetch_headers_ref": None,
        }
    )
    rows = list(read_catalog(engine, spec, DAY, DAY + timedelta(days=1), source_filter="y"))
    assert [(r.image_id, r.url, r.source) for r in rows] == [("a2", "https://h/a2.webp", "y")]
    plan = plan_run(engine, spec, _run(), PlanOptions(model=MODEL))
    assert plan.planned == 2
    assert {s["file_name"] for s in _scans(engine)} == {"a1.png", "a2.webp"}
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['tabel'\] in the Variable image_audit_catalog"):
        CatalogSpec.from_dict({"tabel": "x"})


def test_the_first_valid_row_of_a_duplicate_set_wins(engine):
    """A row is a duplicate of an accepted row before it (by trimmed id, else by URL); one that only
    collides with rejected rows is accepted."""
    at = DAY + timedelta(minutes=1)
    rows = [
        {"image_id": "a", "url": "https://h/1.jpg", "ingested_at": DAY},
        {"image_id": "b", "url": "https://h/1.jpg", "ingested_at": at},  # same URL as a: rejected
        {"image_id": " b", "url": "https://h/2.jpg", "ingested_at": at + timedelta(minutes=1)},  # b lost
        {"image_id": "b ", "url": "https://h/3.jpg", "ingested_at": at + timedelta(minutes=2)},  # " b" won
        {"image_id": "c", "url": "https://h/2.jpg", "ingested_at": at + timedelta(minutes=3)},
    ]
    _seed(engine, rows)
    plan = plan_run(engine, CatalogSpec(), _run(), PlanOptions(model=MODEL))
    assert plan.planned == 2 and plan.rejected == 3
    reasons = {s["image_id"]: s["last_error"] for s in _scans(engine, state="rejected")}
    assert reasons == {
        "b": "duplicate URL: same image as a",
        "b ": "duplicate image id in this interval",
        "c": "duplicate URL: same image as b",
    }
    assert {s["image_id"] for s in _scans(engine, state="pending")} == {"a", " b"}


def test_text_longer_than_the_warehouse_keeps_is_rejected_or_cut_never_a_failed_plan(engine):
    """A data team's catalog may hold longer text than ``audit_scans`` keeps (255 characters): a longer
    image id rejects its row, a longer URL-derived file name rejects its row (Copyleaks' limit), both
    recorded with their text cut; a longer source is cut. The plan never fails on PostgreSQL's limits."""
    table = Table(
        "wide_catalog",
        MetaData(),
        *(Column(name, Text) for name in ("image_id", "url", "file_name", "source", "fetch_headers_ref")),
        Column("ingested_at", DateTime(timezone=True), nullable=False),
    )
    table.create(engine)
    long_name = "n" * 300 + ".jpg"
    rows = [
        {"image_id": "i" * 300, "url": "https://cdn.example.com/a.jpg", "file_name": "a.jpg"},
        {"image_id": "long-name", "url": f"https://cdn.example.com/{long_name}", "file_name": None},
        {
            "image_id": "long-source",
            "url": "https://cdn.example.com/b.jpg",
            "file_name": "b.jpg",
            "source": "s" * 300,
        },
    ]
    with engine.begin() as conn:
        conn.execute(
            table.insert(), [{"source": None, **row, "ingested_at": DAY + timedelta(hours=1)} for row in rows]
        )
    plan = plan_run(engine, CatalogSpec(table="wide_catalog"), _run(), PlanOptions(model=MODEL))

    assert (plan.planned, plan.rejected) == (1, 2)
    rejected = {s["image_id"]: s for s in _scans(engine, state="rejected")}
    assert rejected["i" * 255]["last_error"] == "image id longer than 255 characters"
    assert (
        "255" in rejected["long-name"]["last_error"] and rejected["long-name"]["file_name"] == long_name[:255]
    )
    [accepted] = _scans(engine, state="pending")
    assert (accepted["image_id"], accepted["source"]) == ("long-source", "s" * 255)
