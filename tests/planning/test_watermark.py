"""The catalog's watermark on SQLite and PostgreSQL: runs that follow it claim contiguous intervals, each
catalog row is planned by exactly one of them, overlapping plans never claim the same rows, and runs with
an interval of their own (a backfill) neither read nor move it."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Table, select

from image_audit.planning import PlanOptions, RunContext, plan_run
from image_audit.planning.catalog import CatalogSpec
from image_audit.planning.phases import Planner
from image_audit.planning.watermark import catalog_key, run_interval, watermark
from image_audit.warehouse.schema import audit_run_intervals, audit_scans, image_catalog

MODEL = "ai-image-1-ultra"
DAG_ID = "image_catalog_audit"
#: A day well in the past: a run's end is never past the time it is planned.
DAY = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0) - timedelta(days=5)
CATALOG = catalog_key(CatalogSpec())


def _rows(start: datetime, n: int, prefix: str, step: timedelta = timedelta(minutes=10)) -> list[dict]:
    return [
        {
            "image_id": f"{prefix}-{i:03d}",
            "url": f"https://cdn.example.com/{prefix}/{i:03d}.jpg",
            "file_name": f"{prefix}-{i:03d}.jpg",
            "source": "stock" if i % 2 else "partner-feed",
            "ingested_at": start + i * step,
        }
        for i in range(n)
    ]


def _seed(engine, rows: list[dict], table: Table = image_catalog) -> set[str]:
    with engine.begin() as conn:
        conn.execute(table.insert(), [{c.name: row.get(c.name) for c in table.columns} for row in rows])
    return {row["image_id"] for row in rows}


def _follow(engine, run_id: str, end: datetime, spec: CatalogSpec | None = None, **opts):
    """A plan that follows the watermark up to ``end`` (the catalog's first claim starting at DAY)."""
    options = PlanOptions(model=MODEL, follow_watermark=True, **opts)
    return plan_run(engine, spec or CatalogSpec(), RunContext(DAG_ID, run_id, DAY, end), options)


def _planned(engine) -> dict[str, list[str]]:
    """Each image's planned (not rejected) scans: the runs that planned it."""
    scans = audit_scans.c
    query = select(scans.image_id, scans.run_id).where(scans.state != "rejected").order_by(scans.run_id)
    planned: dict[str, list[str]] = {}
    with engine.connect() as conn:
        for image_id, run_id in conn.execute(query):
            planned.setdefault(image_id, []).append(run_id)
    return planned


def _by_run(engine) -> dict[str, set[str]]:
    runs: dict[str, set[str]] = {}
    for image_id, run_ids in _planned(engine).items():
        for run_id in run_ids:
            runs.setdefault(run_id, set()).add(image_id)
    return runs


def _claims(engine, catalog: str = CATALOG) -> list[tuple[str, datetime, datetime, bool]]:
    """The catalog's recorded intervals in order: (run id, start, end, advances the watermark)."""
    intervals = audit_run_intervals.c
    columns = ("run_id", "interval_start", "interval_end", "advances_watermark")
    query = (
        select(*(intervals[name] for name in columns))
        .where(intervals.catalog == catalog)
        .order_by(intervals.interval_start, intervals.interval_end)
    )
    with engine.connect() as conn:
        return [(r, _utc(s), _utc(e), a) for r, s, e, a in conn.execute(query)]


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _assert_contiguous(claims, first: datetime = DAY) -> None:
    """The claims that advance the watermark tile ``[first, watermark)``: no gap, no overlap."""
    ends = [first]
    for run_id, start, end, advances in claims:
        if advances:
            assert start == ends[-1], f"{run_id} claims from {start}, the watermark was {ends[-1]}"
            assert end >= start
            ends.append(end)


# --- runs in turn ---------------------------------------------------------------------------------------
def test_each_run_plans_the_rows_since_the_watermark_and_moves_it_to_its_end(engine):
    before = _seed(engine, _rows(DAY - timedelta(days=1), 3, "before"))  # before the first start
    first = _seed(engine, _rows(DAY + timedelta(hours=1), 5, "first"))
    second = _seed(engine, _rows(DAY + timedelta(hours=6), 4, "second"))
    assert watermark(engine, CATALOG) is None

    one = _follow(engine, "asset-1", DAY + timedelta(hours=5))
    assert (one.new, one.planned) == (5, 5)
    assert watermark(engine, CATALOG) == DAY + timedelta(hours=5)
    assert run_interval(engine, DAG_ID, "asset-1") == (DAY, DAY + timedelta(hours=5))

    two = _follow(engine, "asset-2", DAY + timedelta(hours=12))
    assert (two.new, two.planned) == (4, 4)
    assert run_interval(engine, DAG_ID, "asset-2") == (DAY + timedelta(hours=5), DAY + timedelta(hours=12))

    # The nightly run with nothing new: an empty plan, the watermark at its end.
    nightly = _follow(engine, "scheduled-1", DAY + timedelta(days=1))
    assert (nightly.new, nightly.planned, nightly.already_scanned) == (0, 0, 0)
    assert watermark(engine, CATALOG) == DAY + timedelta(days=1)

    assert _by_run(engine) == {"asset-1": first, "asset-2": second}
    assert not before & set(_planned(engine))  # before the first start: a backfill's
    _assert_contiguous(_claims(engine))
    scans = {s.image_id: s for s in _scan_rows(engine)}
    assert (_utc(scans["second-000"].data_interval_start), _utc(scans["second-000"].data_interval_end)) == (
        DAY + timedelta(hours=5),
        DAY + timedelta(hours=12),
    )


def _scan_rows(engine):
    with engine.connect() as conn:
        return conn.execute(select(audit_scans)).all()


def test_a_run_due_before_the_watermark_claims_the_empty_interval_there(engine):
    rows = _seed(engine, _rows(DAY + timedelta(hours=1), 6, "img"))
    _follow(engine, "asset-late", DAY + timedelta(hours=10))
    early = _follow(engine, "scheduled-early", DAY + timedelta(hours=2))  # created before, planned after
    assert (early.new, early.planned, early.in_progress) == (0, 0, 0)
    assert run_interval(engine, DAG_ID, "scheduled-early") == (DAY + timedelta(hours=10),) * 2
    assert watermark(engine, CATALOG) == DAY + timedelta(hours=10)
    assert _by_run(engine) == {"asset-late": rows}


def test_a_plan_made_again_for_the_same_run_plans_its_own_claim(engine):
    """A retried plan task: the interval the run claimed, not the watermark's since."""
    _seed(engine, _rows(DAY + timedelta(hours=1), 6, "img", step=timedelta(hours=1)))
    first = _follow(engine, "asset-1", DAY + timedelta(hours=4), batch_size=2)
    _follow(engine, "asset-2", DAY + timedelta(hours=9))
    again = _follow(engine, "asset-1", DAY + timedelta(hours=4), batch_size=2)

    assert first.planned == 3 and again.batch_ids == first.batch_ids and again.in_progress == 3
    assert run_interval(engine, DAG_ID, "asset-1") == (DAY, DAY + timedelta(hours=4))
    assert watermark(engine, CATALOG) == DAY + timedelta(hours=9)
    assert all(len(runs) == 1 for runs in _planned(engine).values())


def test_a_backfill_plans_its_day_and_leaves_the_watermark(engine):
    old_day = DAY - timedelta(days=2)
    old = _seed(engine, _rows(old_day + timedelta(hours=3), 4, "old"))
    new = _seed(engine, _rows(DAY + timedelta(hours=3), 4, "new"))
    _follow(engine, "asset-1", DAY + timedelta(hours=12))

    def backfill(day: datetime):
        run = RunContext(DAG_ID, f"backfill__{day.isoformat()}", day, day + timedelta(days=1))
        return plan_run(engine, CatalogSpec(), run, PlanOptions(model=MODEL))

    past = backfill(old_day)
    assert (past.new, past.planned) == (4, 4)
    covered = backfill(DAY)  # a day the watermark already covered: nothing planned twice
    assert (covered.new, covered.planned, covered.in_progress) == (0, 0, 4)

    assert watermark(engine, CATALOG) == DAY + timedelta(hours=12)
    assert [claim[0] for claim in _claims(engine)] == ["asset-1"]
    assert _by_run(engine) == {"asset-1": new, f"backfill__{old_day.isoformat()}": old}


def test_a_narrowed_run_leaves_the_rest_of_its_interval_to_the_next_claim(engine):
    rows = _seed(engine, _rows(DAY + timedelta(hours=1), 6, "img"))
    limited = _follow(engine, "manual-limit", DAY + timedelta(hours=12), limit=2)
    assert limited.planned == 2
    assert watermark(engine, CATALOG) is None
    assert _claims(engine) == [("manual-limit", DAY, DAY + timedelta(hours=12), False)]

    full = _follow(engine, "asset-1", DAY + timedelta(hours=12))
    assert (full.new, full.in_progress) == (4, 2)
    assert watermark(engine, CATALOG) == DAY + timedelta(hours=12)
    assert set(_planned(engine)) == rows and all(len(r) == 1 for r in _planned(engine).values())


def test_each_catalog_has_a_watermark_of_its_own(engine, team_catalog):
    _seed(engine, _rows(DAY + timedelta(hours=1), 3, "ours"))
    _seed(engine, _rows(DAY + timedelta(hours=1), 2, "theirs"), team_catalog.table)
    _follow(engine, "ours-1", DAY + timedelta(hours=4))
    theirs = _follow(engine, "theirs-1", DAY + timedelta(hours=2), spec=team_catalog.spec)
    assert theirs.planned == 2
    assert watermark(engine, CATALOG) == DAY + timedelta(hours=4)
    assert watermark(engine, "team_catalog") == DAY + timedelta(hours=2)


# --- runs at once ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("b_end_hours", [6, 18], ids=["the-other-ends-first", "the-other-ends-later"])
def test_a_plan_overtaken_by_another_plans_again_from_its_claim(engine, monkeypatch, b_end_hours):
    """Run A stages its rows, run B claims meanwhile, then A decides: A finds the watermark moved and
    plans again from B's end (or the empty interval there), so no row is in both and none in neither."""
    rows = _seed(engine, _rows(DAY + timedelta(minutes=5), 20, "img", step=timedelta(hours=1)))
    a_end, b_end = DAY + timedelta(hours=12), DAY + timedelta(hours=b_end_hours)
    a_staged, b_planned = threading.Event(), threading.Event()
    staged: list[tuple[str, datetime]] = []
    lock = Planner.lock

    def lock_after_b(planner):
        staged.append((planner.run.run_id, planner.run.interval_start))
        if planner.run.run_id == "run-a" and not a_staged.is_set():
            a_staged.set()
            assert b_planned.wait(120), "run B did not plan"
        lock(planner)

    monkeypatch.setattr(Planner, "lock", lock_after_b)
    result: dict = {}
    thread = threading.Thread(target=lambda: result.update(a=_follow(engine, "run-a", a_end)))
    thread.start()
    try:
        assert a_staged.wait(120), "run A did not stage"
        b = _follow(engine, "run-b", b_end)
    finally:
        b_planned.set()
        thread.join(120)
    a = result["a"]

    assert staged == [("run-a", DAY), ("run-b", DAY), ("run-a", b_end)]
    assert run_interval(engine, DAG_ID, "run-b") == (DAY, b_end)
    assert run_interval(engine, DAG_ID, "run-a") == (b_end, max(a_end, b_end))
    expected_b = {r for r in rows if int(r[-3:]) < b_end_hours}
    expected_a = {r for r in rows if b_end_hours <= int(r[-3:]) < 12}
    assert (b.new, a.new) == (len(expected_b), len(expected_a))
    assert _by_run(engine) == {"run-b": expected_b} | ({"run-a": expected_a} if expected_a else {})
    _assert_contiguous(_claims(engine))


def test_plans_started_together_claim_contiguous_intervals_and_plan_each_row_once(engine):
    rows = _seed(engine, _rows(DAY + timedelta(minutes=1), 40, "img", step=timedelta(minutes=30)))
    ends = [DAY + timedelta(hours=h) for h in (7, 3, 20, 13)]
    start, errors = threading.Barrier(len(ends)), []

    def plan(i: int, end: datetime) -> None:
        try:
            start.wait(60)
            _follow(engine, f"run-{i}", end)
        except Exception as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=plan, args=(i, end)) for i, end in enumerate(ends)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(300)
    assert errors == []

    claims = _claims(engine)
    assert len(claims) == len(ends)
    _assert_contiguous(claims)
    assert watermark(engine, CATALOG) == max(ends)
    planned = _planned(engine)
    assert set(planned) == rows and all(len(runs) == 1 for runs in planned.values())
