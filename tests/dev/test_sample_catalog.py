"""The sample catalog: deterministic rows, the deliberately bad ones, and an idempotent seed."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import httpx
from sqlalchemy import func, select

from image_audit.warehouse.engine import get_engine
from image_audit.warehouse.schema import image_catalog
from image_audit_dev.sample_catalog import SOURCES, sample_catalog_rows, seed_catalog

START = datetime(2026, 11, 20, tzinfo=UTC)
BASE = "http://emulator.test/samples"
BAD_IDS = {"bad-no-url", "bad-ftp", "bad-gif", "bad-duplicate", "bad-tiny", "bad-corrupt", "bad-missing"}


def test_rows_are_deterministic_and_spread_over_the_days():
    rows = sample_catalog_rows(BASE, 300, start=START, days=3, bad_rows=False)
    assert rows == sample_catalog_rows(BASE, 300, start=START, days=3, bad_rows=False)
    assert rows != sample_catalog_rows(BASE, 300, start=START, days=3, bad_rows=False, seed=1)
    assert len(rows) == len({r["image_id"] for r in rows}) == len({r["url"] for r in rows}) == 300
    assert {r["source"] for r in rows} == set(SOURCES)
    assert all(START <= r["ingested_at"] < START + timedelta(days=3) for r in rows)
    assert {(r["ingested_at"] - START).days for r in rows} == {0, 1, 2}
    for row in rows:
        assert set(row) == {"image_id", "url", "file_name", "source", "ingested_at", "fetch_headers_ref"}
        assert row["url"] == f"{BASE}/{row['file_name']}" and row["fetch_headers_ref"] is None
    assert {r["file_name"].rsplit(".", 1)[1] for r in rows} == {"jpg", "png", "webp"}


def test_bad_rows_cover_every_kind_of_broken_input():
    rows = sample_catalog_rows(BASE + "/", 20, start=START)
    bad = {r["image_id"]: r for r in rows if r["image_id"] in BAD_IDS}
    assert len(rows) == 27 and set(bad) == BAD_IDS
    assert bad["bad-no-url"]["url"] is None
    assert bad["bad-ftp"]["url"].startswith("ftp://")
    assert bad["bad-gif"]["file_name"].endswith(".gif")
    assert bad["bad-duplicate"]["url"] == rows[0]["url"]
    assert bad["bad-duplicate"]["ingested_at"] > rows[0]["ingested_at"]
    for variant in ("tiny", "corrupt", "missing"):
        assert bad[f"bad-{variant}"]["url"].startswith(f"{BASE}/{variant}/")
    assert all(START <= r["ingested_at"] < START + timedelta(days=1) for r in rows)


def test_catalog_urls_are_served_by_the_emulator(emulator):
    rows = sample_catalog_rows(f"{emulator.url}/samples", 5, start=START)
    by_id = {r["image_id"]: r for r in rows}
    for row in rows[:5]:
        response = httpx.get(row["url"])
        assert response.status_code == 200 and response.headers["content-type"].startswith("image/")
    assert httpx.get(by_id["bad-missing"]["url"]).status_code == 404
    assert httpx.get(by_id["bad-tiny"]["url"]).status_code == 200


def test_seed_is_idempotent_and_chunked(warehouse_url):
    engine = get_engine(warehouse_url)
    rows = sample_catalog_rows(BASE, 25, start=START)
    assert seed_catalog(engine, rows[:10], chunk_size=4) == 10
    assert seed_catalog(engine, rows, chunk_size=4) == len(rows) - 10
    assert seed_catalog(engine, rows, chunk_size=4) == 0
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(image_catalog)).scalar_one() == len(rows)
        stored = (
            conn.execute(select(image_catalog).where(image_catalog.c.image_id == "bad-ftp")).mappings().one()
        )
    assert stored["url"].startswith("ftp://") and stored["source"] == "user-uploads"
