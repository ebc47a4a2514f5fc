"""A sample image catalog for the demo, the tests and the benchmarks: emulator-served images.

With ``bad_rows``, some rows are deliberately broken: rows the DAG must reject (no URL, ftp scheme,
unsupported extension, duplicate URL) and good-looking rows whose images Copyleaks cannot scan
(too small, not decodable, 404), which come back as error webhooks.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from datetime import datetime, timedelta
from itertools import islice

from sqlalchemy import Engine, func, select
from sqlalchemy.dialects import postgresql, sqlite

from image_audit.warehouse.schema import image_catalog

SOURCES = ("partner-feed", "user-uploads", "stock", "marketing")
EXTENSIONS = ("jpg", "jpg", "jpg", "png", "webp")


def sample_catalog_rows(
    samples_base_url: str,
    n: int = 200,
    *,
    start: datetime,
    days: int = 1,
    bad_rows: bool = True,
    seed: int = 0,
) -> list[dict]:
    """``n`` good rows ingested over ``days`` days from ``start`` (plus the bad ones, if asked)."""
    rng = random.Random(seed)
    base = samples_base_url.rstrip("/")
    span = timedelta(days=days).total_seconds()
    rows = []
    for i in range(n):
        name = f"img-{i:05d}.{rng.choice(EXTENSIONS)}"
        rows.append(
            {
                "image_id": f"img-{i:05d}",
                "url": f"{base}/{name}",
                "file_name": name,
                "source": rng.choice(SOURCES),
                "ingested_at": start + timedelta(seconds=span * (i + 0.5) / max(n, 1)),
                "fetch_headers_ref": None,
            }
        )
    if bad_rows:
        late = start + timedelta(seconds=span - 60)  # after the rows they duplicate
        bad = [  # (image_id, url, file_name)
            ("bad-no-url", None, "no-url.jpg"),
            ("bad-ftp", "ftp://files.example.com/pic.jpg", "pic.jpg"),
            ("bad-gif", f"{base}/animated.gif", "animated.gif"),
            ("bad-duplicate", rows[0]["url"] if rows else f"{base}/x.jpg", "duplicate.jpg"),
            ("bad-tiny", f"{base}/tiny/tiny-1.png", "tiny-1.png"),
            ("bad-corrupt", f"{base}/corrupt/broken-1.jpg", "broken-1.jpg"),
            ("bad-missing", f"{base}/missing/gone-1.jpg", "gone-1.jpg"),
        ]
        rows += [
            {
                "image_id": image_id,
                "url": url,
                "file_name": file_name,
                "source": "user-uploads",
                "ingested_at": late,
                "fetch_headers_ref": None,
            }
            for image_id, url, file_name in bad
        ]
    return rows


def seed_catalog(engine: Engine, rows: Iterable[dict], chunk_size: int = 5_000) -> int:
    """Insert catalog rows in chunks, skipping image ids already there (idempotent).

    Returns how many rows were new.
    """
    dialect = postgresql if engine.dialect.name == "postgresql" else sqlite
    statement = dialect.insert(image_catalog).on_conflict_do_nothing(index_elements=["image_id"])
    iterator, inserted = iter(rows), 0
    while chunk := list(islice(iterator, chunk_size)):
        ids = [row["image_id"] for row in chunk]
        with engine.begin() as conn:
            known = conn.execute(
                select(func.count()).select_from(image_catalog).where(image_catalog.c.image_id.in_(ids))
            ).scalar_one()
            conn.execute(statement, chunk)
        inserted += len(set(ids)) - known
    return inserted
