"""Archiving old results on SQLite and PostgreSQL: the model's answers stay identical (as stored, and when
recomputed from what is left), the archived rows are exactly the Parquet files' rows, what is not settled
or not old enough stays, and planning still knows an archived image was scanned."""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime, timedelta

import pyarrow.parquet as pq
import pytest
from sqlalchemy import func, select, update

from image_audit.maintenance import archive
from image_audit.maintenance.archive import archive_results
from image_audit.planning import PlanOptions, RunContext, plan_run
from image_audit.planning.catalog import CatalogSpec
from image_audit.reporting.storage import as_storage_path
from image_audit.warehouse.analytics import refresh_all, refresh_changed
from image_audit.warehouse.engine import get_engine
from image_audit.warehouse.schema import (
    audit_archived_images,
    audit_failed_callbacks,
    audit_results,
    audit_scans,
    image_catalog,
    image_standing,
)
from tests.support.analytics import model, random_nights
from tests.support.factories import MODEL
from tests.support.reports import D1

#: The archiving's "now": the nights' scans are last updated a day after their ingestion (D1 - 20 days
#: to D1 + 8), and the month before CUTOFF is old enough.
NOW = D1 + timedelta(days=40)
AGE = timedelta(days=30)
CUTOFF = NOW - AGE


def _age_the_nights(engine) -> None:
    """Stamp each scan as last updated a day after its ingestion, then rebuild the model (the stamps
    moved back in time, which no refresh since its watermark would see)."""
    scan = audit_scans.c
    with engine.begin() as conn:
        for scan_id, ingested in conn.execute(select(scan.scan_id, scan.ingested_at)).all():
            conn.execute(
                update(audit_scans)
                .where(scan.scan_id == scan_id)
                .values(updated_at=ingested + timedelta(days=1), created_at=ingested + timedelta(hours=1))
            )
        refresh_all(conn)


def _rows(engine, table) -> dict[str, dict]:
    with engine.connect() as conn:
        return {row["scan_id"]: dict(row) for row in conn.execute(select(table)).mappings()}


def _parquet_rows(files: list[str], name: str) -> list[dict]:
    rows = []
    for uri in files:
        if uri.endswith(f"/{name}.parquet"):
            rows += pq.read_table(uri.removeprefix("file://")).to_pylist()
    return rows


@pytest.mark.parametrize("seed_value", [4, 5])
def test_archiving_a_month_keeps_the_models_answers_identical(
    warehouse_url, tmp_path, seed_value, monkeypatch
):
    monkeypatch.setattr(archive, "ROWS_PER_CHUNK", 7)  # a day's rows go to its files in several chunks
    engine = get_engine(warehouse_url)
    random_nights(engine, random.Random(seed_value), nights=8)
    _age_the_nights(engine)
    with engine.begin() as conn:  # a failed callback of a settled scan: archived with it
        failed = conn.execute(select(audit_scans.c.scan_id).where(audit_scans.c.state == "failed")).scalars()
        conn.execute(
            audit_failed_callbacks.insert(),
            [{"scan_id": scan_id, "body_sha256": f"{i:064d}", "kind": "error", "reason": "could not fetch",
              "received_at": D1, "raw_body": {"error": {"code": 3}}} for i, scan_id in enumerate(failed)],
        )  # fmt: skip
    with engine.connect() as conn:
        before = model(conn)
    scans, results = _rows(engine, audit_scans), _rows(engine, audit_results)
    callbacks = _rows(engine, audit_failed_callbacks)

    done = archive_results(engine, AGE, now=NOW, base=as_storage_path(tmp_path / "reports"))

    # the model's answers, as stored and as recomputed from what is left and the archive's tables
    with engine.connect() as conn:
        assert model(conn) == before
    for recompute in (refresh_all, refresh_changed):
        with engine.begin() as conn:
            recompute(conn)
        with engine.connect() as conn:
            assert model(conn) == before

    # exactly the settled images whose every scan is older than the cut-off went, and into the files
    left = _rows(engine, audit_scans)
    gone = set(scans) - set(left)
    by_image: dict = {}
    for scan_id, scan in scans.items():
        key = scan_id if not scan["image_id"].strip() else scan["image_id"]
        by_image.setdefault((key, scan["model"]), []).append(scan)
    archivable = {
        scan["scan_id"]
        for image in by_image.values()
        if all(
            s["state"] in ("completed", "failed", "rejected") and s["updated_at"].replace(tzinfo=UTC) < CUTOFF
            for s in image
        )
        for scan in image
    }
    assert gone == archivable and gone and left, (len(gone), len(left))
    assert done.scans == len(gone) and done.images == sum(
        1 for image in by_image.values() if image[0]["scan_id"] in gone
    )
    archived_scans = _parquet_rows(done.files, "audit_scans")
    assert sorted(row["scan_id"] for row in archived_scans) == sorted(gone)
    for row in archived_scans:
        original = scans[row["scan_id"]]
        assert row["state"] == original["state"] and row["attempt"] == original["attempt"]
        assert row["updated_at"] == original["updated_at"].replace(tzinfo=UTC)
    archived_results = _parquet_rows(done.files, "audit_results")
    assert sorted(row["scan_id"] for row in archived_results) == sorted(set(results) & gone)
    for row in archived_results:
        assert json.loads(row["mask_lengths"]) == results[row["scan_id"]]["mask_lengths"]
    assert set(_rows(engine, audit_results)) == set(results) - gone
    assert {row["scan_id"] for row in _parquet_rows(done.files, "audit_failed_callbacks")} == set(
        callbacks
    ) & gone
    assert set(_rows(engine, audit_failed_callbacks)) == set(callbacks) - gone

    # archiving again finds nothing more
    again = archive_results(engine, AGE, now=NOW, base=as_storage_path(tmp_path / "reports"))
    assert (again.images, again.scans) == (0, 0)


def test_planning_knows_an_archived_image_was_scanned(warehouse_url, tmp_path):
    engine = get_engine(warehouse_url)
    old = D1 - timedelta(days=60)
    with engine.begin() as conn:
        conn.execute(
            image_catalog.insert(),
            [{"image_id": image_id, "url": f"https://cdn.example.com/{image_id}.jpg", "file_name": None,
              "source": "shop", "ingested_at": old} for image_id in ("kept", "archived")],
        )  # fmt: skip
    first = RunContext("audit_dag", "first", old - timedelta(hours=1), old + timedelta(hours=1))
    plan = plan_run(engine, CatalogSpec(), first, PlanOptions(model=MODEL))
    assert plan.new == 2
    with engine.begin() as conn:
        conn.execute(update(audit_scans).values(state="completed", updated_at=old, completed_at=old))
        conn.execute(
            update(audit_scans).where(audit_scans.c.image_id == "kept").values(updated_at=datetime.now(UTC))
        )
        refresh_all(conn)
    done = archive_results(engine, AGE, base=as_storage_path(tmp_path / "reports"))
    assert (done.images, done.scans) == (1, 1)
    with engine.connect() as conn:
        snapshot = conn.execute(select(audit_archived_images)).mappings().one()
        assert (snapshot["image_id"], snapshot["latest_attempt"], snapshot["state"]) == (
            "archived",
            1,
            "completed",
        )

    # the catalog rows again (a backfill): both are already scanned, neither is submitted again
    again = RunContext("audit_dag", "again", old - timedelta(hours=1), old + timedelta(hours=1))
    plan = plan_run(engine, CatalogSpec(), again, PlanOptions(model=MODEL))
    assert (plan.new, plan.already_scanned, plan.planned) == (0, 2, 0)

    # forced: the archived image's next attempt is its second, and its standing counts both
    forced = RunContext("audit_dag", "forced", old - timedelta(hours=1), old + timedelta(hours=1))
    plan_run(engine, CatalogSpec(), forced, PlanOptions(model=MODEL, force_rescan=True))
    with engine.begin() as conn:
        attempts = dict(
            conn.execute(
                select(audit_scans.c.image_id, func.max(audit_scans.c.attempt)).group_by(
                    audit_scans.c.image_id
                )
            ).all()
        )
        assert attempts == {"kept": 2, "archived": 2}
        refresh_changed(conn)
        standing = (
            conn.execute(select(image_standing).where(image_standing.c.image_id == "archived"))
            .mappings()
            .one()
        )
    # the new attempt is in flight: the archived completed verdict still stands, over two attempts
    assert (standing["state"], standing["attempts"]) == ("completed", 2)
    assert standing["scan_id"] == snapshot["scan_id"]


def test_archiving_refuses_an_age_the_model_may_not_have_read(warehouse_url, tmp_path):
    with pytest.raises(ValueError, match="older than"):
        archive_results(get_engine(warehouse_url), timedelta(hours=1), base=as_storage_path(tmp_path))
