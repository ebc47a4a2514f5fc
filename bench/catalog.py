"""Planning a run over a 1,000,000-row catalog: the planning is set-based (SQL decides in
the warehouse, Python streams only the rows' checks through), so its memory does not grow with the
catalog, and a night's planning stays short. Measured at 10,000 rows and at the sizes asked, side by
side."""

from __future__ import annotations

import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from bench.common import report, run_json, warehouse
from image_audit.warehouse.engine import get_engine
from image_audit_dev.sample_catalog import sample_catalog_rows, seed_catalog

TARGET_RSS_MIB = 200
#: Planning time targets (seconds) by catalog size.
TARGET_SECONDS = {10_000: 1, 1_000_000: 20}
START = datetime(2026, 11, 20, tzinfo=UTC)


def plan_catalog(count: int, workdir: Path) -> dict:
    with warehouse("sqlite", workdir) as url:
        seeded = time.perf_counter()
        engine = get_engine(url)
        for offset in range(0, count, 100_000):
            rows = sample_catalog_rows("https://cdn.example.com/catalog", min(100_000, count - offset),
                                       start=START, bad_rows=False, seed=offset)  # fmt: skip
            for row in rows:  # unique ids and URLs across chunks
                row["image_id"] = f"{offset}-{row['image_id']}"
                row["url"] = row["url"].replace("/img-", f"/{offset}-img-")
            seed_catalog(engine, rows)
        seed_seconds = time.perf_counter() - seeded
        args = [
            "--warehouse",
            url,
            "--start",
            START.isoformat(),
            "--end",
            (START + timedelta(days=1)).isoformat(),
        ]
        measured = run_json(["bench.plan_process", *args])
    measured["seed_seconds"] = round(seed_seconds, 1)
    return measured


def main(sizes: tuple[int, ...] = (100_000, 1_000_000)) -> dict:
    figures: dict = {}
    targets = []
    with tempfile.TemporaryDirectory(prefix="bench-catalog-") as tmp:
        for count in sorted({10_000, *sizes}):
            measured = plan_catalog(count, Path(tmp))
            figures[f"plan over {count} catalog rows"] = (
                f"peak RSS {measured['peak_rss_mib']} MiB, {measured['seconds']} s "
                f"({measured['cpu_seconds']} s of CPU), "
                f"{measured['planned']} planned in {measured['batches']} batches"
            )
            if count >= 1_000_000:
                targets.append(
                    (
                        f"{count} rows: peak RSS < {TARGET_RSS_MIB} MiB",
                        measured["peak_rss_mib"] < TARGET_RSS_MIB,
                    )
                )
            if count in TARGET_SECONDS:
                limit = TARGET_SECONDS[count]
                targets.append((f"{count} rows: planned in < {limit} s", measured["seconds"] < limit))
    return report("catalog", figures, targets)


if __name__ == "__main__":
    main()
