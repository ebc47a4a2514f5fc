"""The analytics model (image_standing, audit_daily) on SQLite and PostgreSQL: it equals what a plain
Python reading of the per-scan tables gives, a recompute is idempotent, closing each run keeps it current
(late callbacks included), the migration back-fills it, and the example query of docs/analytics.md
returns the expected figures."""

from __future__ import annotations

import random
import re
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import delete, text, update

from image_audit.reporting import build_run_report
from image_audit.warehouse.analytics import refresh_all, refresh_changed, refresh_images
from image_audit.warehouse.engine import get_engine
from image_audit.warehouse.migrations import current_revision, downgrade, head_revision, upgrade
from image_audit.warehouse.schema import (
    analytics_refresh,
    audit_results,
    audit_scans,
)
from tests.support import ROOT
from tests.support.analytics import (
    assert_model_is_current,
    model,
    random_nights,
)
from tests.support.factories import MODEL
from tests.support.reports import (
    D1,
    DAG_ID,
    EXPECTED,
    R1,
    R2,
    ImageFetcher,
    Scan,
    insert_report_scans,
    r1_scans,
    r2_scans,
)

#: A scan of run R1 that failed, and whose result arrives after the failure (see the late-result test).
LATE = Scan("q", "shop", D1, "failed", run_id=R1, error="Copyleaks could not fetch the image", scan_id="q-1")


def seed(engine) -> None:
    """R1 and R2's scans, stamped days ago: as the model had never been refreshed (its first refresh reads
    everything)."""
    insert_report_scans(engine, [*r1_scans(), LATE])
    insert_report_scans(engine, r2_scans())
    with engine.begin() as conn:
        conn.execute(delete(analytics_refresh))


def _report(engine, run_id, tmp_path, name):
    """What the end of a run does: ``close_run`` brings the model up to date, then ``report``."""
    with engine.begin() as conn:
        refresh_changed(conn)
    return build_run_report(engine, DAG_ID, run_id, out_dir=tmp_path / name, fetch_image=ImageFetcher())


# --- (1) the model equals the per-scan tables' reading, as the report keeps it ------------------------


def test_the_reports_keep_the_model_equal_to_the_per_scan_tables(warehouse_url, tmp_path):
    engine = get_engine(warehouse_url)
    seed(engine)
    _report(engine, R1, tmp_path, "r1")
    report = _report(engine, R2, tmp_path, "r2")
    standing, daily = assert_model_is_current(engine)

    # the run's images stand as its report counts them (same rule, same thresholds)
    verdicts = {image: row["verdict"] for (image, _), row in standing.items() if row["verdict"]}
    assert {i: v for i, v in verdicts.items() if i in EXPECTED["verdict_by_image"]} == EXPECTED[
        "verdict_by_image"
    ]
    assert report.summary["verdicts"] == {
        v: sum(1 for i, w in verdicts.items() if w == v and i != "p")
        for v in ("ai_generated", "partly_ai", "human")
    }
    # across runs: e timed out in R1, completed in R2 -> 2 attempts, first audited by R1
    e = standing["e", MODEL]
    assert (e["verdict"], e["attempts"], e["run_id"], e["last_error"]) == ("human", 2, R2, None)
    assert e["first_audited_at"] < e["last_audited_at"]
    # retries and time-outs: k timed out twice; a late first-attempt result (i) loses to attempt 2
    assert (standing["k", MODEL]["state"], standing["k", MODEL]["attempts"]) == ("timed_out", 2)
    assert standing["k", MODEL]["last_error"] == "no webhook before the run's wait ended"
    assert (standing["i", MODEL]["ai"], standing["i", MODEL]["verdict"]) == (0.97, "ai_generated")
    # rejections: a rejected duplicate of a completed image leaves it completed; blank ids are images
    assert standing["a", MODEL]["state"] == "completed"
    assert (standing["l", MODEL]["state"], standing["l", MODEL]["attempts"]) == ("rejected", 0)
    assert standing["l", MODEL]["last_error"] == "missing url"
    assert {standing[k, MODEL]["state"] for k in ("rej-blank-1", "rej-blank-2")} == {"rejected"}
    assert standing["rej-blank-1", MODEL]["last_error"] == "missing image id"
    # the provenance metadata and the masked share (f: 100 of 2,000 pixels)
    f = standing["f", MODEL]
    assert (f["issued_by"], f["mask_share"], f["verdict"]) == ("Example Camera Co", 0.05, "partly_ai")
    shop = daily["2026-11-20", "shop", MODEL]
    assert (shop["images"], shop["completed"], shop["ai_generated"], shop["failed"], shop["rejected"]) == (
        6,
        3,
        2,
        2,
        1,
    )  # fmt: skip  (a, b, h completed; j and q failed; l rejected)


def test_a_late_result_after_a_failure_is_counted_when_the_next_run_closes(warehouse_url, tmp_path):
    engine = get_engine(warehouse_url)
    seed(engine)
    _report(engine, R1, tmp_path, "r1")
    _report(engine, R2, tmp_path, "r2")
    with engine.connect() as conn:
        before = model(conn)
    assert (before[0]["q", MODEL]["state"], before[0]["q", MODEL]["last_error"]) == (
        "failed",
        "Copyleaks could not fetch the image",
    )

    # the result arrives after the failure: the receiver completes the scan (a result always wins)
    late = {"issuedBy": "Late Cam", "issuedTime": "2026-11-19T10:00:00Z", "appOrDeviceUsed": "Editor 2"}
    with engine.begin() as conn:
        conn.execute(
            audit_results.insert(),
            {"scan_id": "q-1", "ai": 0.93, "human": 0.07, "model": MODEL, "width": 50, "height": 40,
             "mask_starts": [0], "mask_lengths": [100], "mask_pixels": 100, "image_metadata": late,
             "actual_credits": 3, "expected_credits": 1, "received_at": datetime.now(UTC),
             "raw_body": {}},
        )  # fmt: skip
        conn.execute(
            update(audit_scans)
            .where(audit_scans.c.scan_id == "q-1")
            .values(state="completed", updated_at=datetime.now(UTC))
        )
    with engine.connect() as conn:
        assert model(conn) == before  # not until the model is recomputed

    _report(engine, "manual__next", tmp_path, "next")  # the next run to close picks the late result up
    standing, daily = assert_model_is_current(engine)
    q = standing["q", MODEL]
    assert (q["state"], q["verdict"], q["last_error"]) == ("completed", "ai_generated", None)
    assert (q["issued_by"], q["issued_time"], q["app_or_device_used"]) == (
        "Late Cam",
        "2026-11-19T10:00:00Z",
        "Editor 2",
    )
    shop, old = daily["2026-11-20", "shop", MODEL], before[1]["2026-11-20", "shop", MODEL]
    assert (shop["failed"], shop["ai_generated"], shop["results"]) == (
        old["failed"] - 1,
        old["ai_generated"] + 1,
        old["results"] + 1,
    )
    assert shop["actual_credits"] == old["actual_credits"] + 3


def _second_attempt_of_j(warehouse_url, state: str):
    """The seeded warehouse and its model, then a new attempt at j (failed on D1) in ``state``, from
    the catalog's re-ingestion of j three days later, and the model's refresh; returns the engine and
    what the refresh wrote."""
    engine = get_engine(warehouse_url)
    seed(engine)
    with engine.begin() as conn:
        refresh_all(conn)
        conn.execute(
            audit_scans.insert(),
            {"scan_id": "j-2", "image_id": "j", "model": MODEL, "attempt": 2, "state": state,
             "source": "shop", "ingested_at": D1 + timedelta(days=3), "dag_id": DAG_ID, "run_id": "manual__x",
             "sandbox": False, "expected_credits": 1, "created_at": datetime.now(UTC),
             "updated_at": datetime.now(UTC)},
        )  # fmt: skip
        return engine, refresh_changed(conn)


def test_an_image_that_moves_day_leaves_its_old_day(warehouse_url):
    engine, written = _second_attempt_of_j(warehouse_url, "submitted")
    assert written == (1, 2)  # j; its old day and its new one
    standing, daily = assert_model_is_current(engine)
    assert standing["j", MODEL]["ingest_day"] == "2026-11-23"
    assert daily["2026-11-23", "shop", MODEL]["in_flight"] == 1


def test_an_image_whose_standing_falls_back_to_an_unchanged_scan_returns_to_its_day(warehouse_url):
    engine, _ = _second_attempt_of_j(warehouse_url, "pending")
    assert_model_is_current(engine)
    with engine.begin() as conn:
        # Copyleaks refuses the new attempt at submission: j stands on its failed first attempt again,
        # a scan that did not change, on a day no changed scan is on
        conn.execute(
            update(audit_scans)
            .where(audit_scans.c.scan_id == "j-2")
            .values(state="rejected", updated_at=datetime.now(UTC))
        )
        refresh_changed(conn)
    standing, daily = assert_model_is_current(engine)
    assert standing["j", MODEL]["scan_id"] == "j-1-r2"
    assert daily["2026-11-23", "shop", MODEL]["rejected"] == 0


@pytest.mark.parametrize("seed_value", [1, 2, 3])
def test_random_nights_keep_the_model_equal_to_the_per_scan_tables(warehouse_url, seed_value):
    engine = get_engine(warehouse_url)
    held = random_nights(engine, random.Random(seed_value), nights=8)
    assert held["late results"] and held["backfills"], held
    with engine.connect() as conn:
        standing, daily = model(conn)
    # the nights did what they are for: retries, rejections, late results, several days and models
    assert max(row["attempts"] for row in standing.values()) >= 2
    assert any(row["state"] == "rejected" for row in standing.values())
    assert len({key[0] for key in daily}) >= 3 and len({key[2] for key in daily}) == 2


# --- (2) idempotent ---------------------------------------------------------------------------------------


def test_recomputing_gives_the_same_rows(warehouse_url, tmp_path):
    engine = get_engine(warehouse_url)
    seed(engine)
    _report(engine, R2, tmp_path, "r2")
    with engine.begin() as conn:
        refresh_all(conn)
        once = model(conn)
    for recompute in (
        lambda conn: refresh_all(conn),
        lambda conn: refresh_all(conn),
        lambda conn: refresh_changed(conn),
        lambda conn: refresh_changed(conn, now=datetime.now(UTC) + timedelta(days=1)),
        lambda conn: refresh_images(conn, [("a", MODEL), ("e", MODEL), ("missing", MODEL)]),
        lambda conn: refresh_images(conn, []),
    ):
        with engine.begin() as conn:
            recompute(conn)
            assert model(conn) == once
    _report(engine, R2, tmp_path, "r2-again")
    with engine.connect() as conn:
        assert model(conn) == once
    assert_model_is_current(engine)


# --- (3) the migration back-fills a warehouse's existing rows -----------------------------------------


def test_the_migration_back_fills_the_model_from_existing_scans(warehouse_url):
    engine = get_engine(warehouse_url)
    downgrade(engine, "0004")  # a warehouse of the release before the model, with runs in it
    insert_report_scans(engine, [*r1_scans(), LATE])
    insert_report_scans(engine, r2_scans())
    upgrade(engine)
    assert current_revision(engine) == head_revision() == "0006"
    standing, daily = assert_model_is_current(engine)
    # R2: 17 images in 21 scans; R1: p, e (again) and q
    assert len(standing) == 19 and sum(row["scans"] for row in daily.values()) == 24
    downgrade(engine, "0004")
    with engine.connect() as conn:
        assert not {"image_standing", "audit_daily", "analytics_refresh"} & set(
            engine.dialect.get_table_names(conn)
        )
    upgrade(engine)
    assert_model_is_current(engine)
    # the back-fill marks the model refreshed: the next run's close recomputes only what changes after
    with engine.begin() as conn:
        assert refresh_changed(conn) == (0, 0)


# --- (4) the documentation's example query --------------------------------------------------------------


def example_query() -> str:
    page = (ROOT / "docs" / "analytics.md").read_text(encoding="utf-8")
    (query,) = re.findall(r"<!-- example-query -->\s*```sql\n(.*?)```", page, re.S)
    return query


def test_the_documented_example_query_returns_the_expected_figures(warehouse_url):
    engine = get_engine(warehouse_url)
    seed(engine)
    with engine.begin() as conn:
        refresh_all(conn)
    with engine.connect() as conn:
        rows = conn.execute(text(example_query()), {"since": "2026-11-20"}).all()
    # p (shop, ingested 2026-11-19) is before :since; q failed, so it is no completed image
    assert [(source, completed, ai_generated) for source, completed, ai_generated, _ in rows] == [
        ("", 1, 0),  # g
        ("blog", 4, 1),  # d, e, f, i; i
        ("shop", 5, 3),  # a, b, c, h, o; a, b, o
    ]
    assert [share for *_, share in rows] == pytest.approx([0.0, 0.25, 0.6])
