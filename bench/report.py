"""The report of one run at 100,000 images: wall time, CPU time and peak RSS of ``build_run_report``,
on SQLite and PostgreSQL; and the wall time of the run's analytics model recompute (``close_run``).

The warehouse is seeded as a real run leaves it: scans as planning writes them (a few rejected rows,
some adopted from earlier days, a few retried after a time-out), and the results stored by the
receiver's own code (``store_callbacks``) from the emulator's detection and error bodies, so the RLE
masks (and the AI pixel counts stored with them) are the webhook's. The report is built in a process
of its own (``python -m bench.report --measure``), so its peak RSS is the report's alone, with a local
fetcher for the thumbnails' images.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import resource
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from bench.callbacks import MODEL
from bench.common import postgres_admin_url, report, run_json, warehouse

TARGET_SECONDS = 3.0
DAG_ID = "bench_report"
RUN_ID = "scheduled__2026-11-21T00:00:00+00:00"
START = datetime(2026, 11, 20, tzinfo=UTC)
SOURCES = ("partner-feed", "user-uploads", "stock", "marketing", "archive")
#: Distinct sample images behind the results (their sizes and masks vary with the name).
SAMPLES = 64
CHUNK = 2_000
#: Builds measured per backend (each in a fresh process); the median is the figure.
ROUNDS = 3
#: Reasons of the rows planning rejects, and of the images Copyleaks fails.
REJECTIONS = ("missing url", "unsupported file extension '.gif'", "duplicate image id in this interval")
TIMED_OUT = "no webhook before the run's wait ended"


def _sample_name(i: int) -> str:
    return f"img-{i % SAMPLES:05d}.jpg"


def _plan(count: int, seed: int = 7) -> list[dict]:
    """One row per scan of the run: ~2% rejected, ~3% failed, ~1% timed out, ~1% retried after a
    time-out, ~5% adopted from the two previous days; the rest completed (``outcome`` says which)."""
    rng = random.Random(seed)
    now = START + timedelta(days=1, hours=1)
    rows = []
    for i in range(count):
        roll = rng.random()
        outcome = "rejected" if roll < 0.02 else "failed" if roll < 0.05 else "completed"
        outcome = "timed_out" if 0.05 <= roll < 0.06 else outcome
        ingested = START + timedelta(seconds=86_400 * (i + 0.5) / count)
        if rng.random() < 0.05:
            ingested -= timedelta(days=rng.choice((1, 2)))
        name = _sample_name(i)
        base = {
            "image_id": f"img-{i:07d}",
            "model": MODEL,
            "url": f"https://cdn.example.com/catalog/{name}?sig=bench-{i}",
            "file_name": name,
            "source": rng.choice(SOURCES),
            "ingested_at": ingested,
            "dag_id": DAG_ID,
            "run_id": RUN_ID,
            "data_interval_start": START,
            "data_interval_end": START + timedelta(days=1),
            "sandbox": False,
            "expected_credits": 1,
            "created_at": now,
            "updated_at": now,
        }
        if outcome == "completed" and rng.random() < 0.01:  # a first attempt that timed out
            rows.append(
                base
                | {
                    "scan_id": f"s-{i:07d}-1",
                    "attempt": 1,
                    "state": "timed_out",
                    "batch_id": f"b-{i // 500}",
                    "submitted_at": now,
                    "last_error": TIMED_OUT,
                    "outcome": "timed_out",
                }
            )
            attempt = 2
        else:
            attempt = 1
        sent = outcome != "rejected"
        rows.append(
            base
            | {
                "scan_id": f"s-{i:07d}-{attempt}",
                "attempt": attempt,
                "state": "submitted" if sent else "rejected",
                "batch_id": f"b-{i // 500}" if sent else None,
                "submitted_at": now if sent else None,
                "last_error": None if sent else rng.choice(REJECTIONS),
                "outcome": outcome,
            }
        )
    for row in rows:  # states the receiver does not set
        if row["outcome"] == "timed_out":
            row["state"], row["last_error"] = "timed_out", TIMED_OUT
    return rows


async def _deliver(url: str, rows: list[dict]) -> None:
    """The webhooks of the sent scans, stored by the receiver's code in batches of ``CHUNK``."""
    from copyleaks_emulator.detector import ImageRejected, decode, detect, error_body
    from copyleaks_emulator.samples import sample_image
    from copyleaks_provider.models import WebhookBody
    from copyleaks_provider.webhooks.callbacks import Callback
    from image_audit.warehouse.engine import create_async_warehouse_engine
    from image_audit.warehouse.results import store_callbacks

    images = [decode(sample_image(_sample_name(i))[0]) for i in range(SAMPLES)]
    failure = ImageRejected("image could not be decoded (UnidentifiedImageError)")
    sent = [row for row in rows if row["outcome"] in ("completed", "failed") and row["state"] == "submitted"]
    engine = create_async_warehouse_engine(url, write_transactions=True)
    try:
        for offset in range(0, len(sent), CHUNK):
            callbacks = []
            for row in sent[offset : offset + CHUNK]:
                scan_id = row["scan_id"]
                if row["outcome"] == "failed":
                    raw = error_body(scan_id, failure)
                else:
                    raw = detect(images[int(row["image_id"][4:]) % SAMPLES], scan_id, model=MODEL)
                raw["developerPayload"] = "bench"
                callbacks.append(Callback(scan_id, WebhookBody.model_validate(raw), raw))
            await store_callbacks(engine, callbacks)
    finally:
        await engine.dispose()


def seed_run(url: str, count: int) -> int:
    """Seed the run's ``count`` images (scans and results); returns the scan rows."""
    from sqlalchemy import text

    from image_audit.warehouse.engine import get_engine
    from image_audit.warehouse.schema import audit_scans

    rows = _plan(count)
    engine = get_engine(url)
    with engine.begin() as conn:
        scans = [{k: v for k, v in row.items() if k != "outcome"} for row in rows]
        for offset in range(0, len(scans), CHUNK * 5):
            conn.execute(audit_scans.insert(), scans[offset : offset + CHUNK * 5])
    asyncio.run(_deliver(url, rows))
    if engine.dialect.name == "postgresql":  # the statistics autovacuum keeps on a live warehouse
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text("ANALYZE"))
    return len(rows)


def _fetcher():
    """The thumbnails' images, by the sample name at the end of the URL (no network in the figure)."""
    from copyleaks_emulator.samples import sample_image

    def fetch(url: str) -> bytes:
        return sample_image(url.rsplit("/", 1)[-1].split("?", 1)[0])[0]

    return fetch


def peak_rss_mib() -> int:
    """This process's peak RSS. ``VmHWM``, not ``ru_maxrss``: Linux carries the parent's peak into
    ``ru_maxrss`` across fork and exec, so a child of the seeding process would report the seeder's."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024)
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def measure(url: str, out_dir: str, profile: bool) -> dict:
    """Build the report once in this process: wall time and peak RSS (and pyinstrument's top lines)."""
    from image_audit.reporting import build_run_report
    from image_audit.warehouse.engine import get_engine

    engine = get_engine(url)
    fetch = _fetcher()
    for i in range(SAMPLES):  # the image server's work, not the report's
        fetch(f"https://cdn.example.com/catalog/{_sample_name(i)}")
    profiler = None
    if profile:
        from pyinstrument import Profiler

        profiler = Profiler(interval=0.001)
        profiler.start()
    cpu = time.process_time()
    started = time.perf_counter()
    built = build_run_report(engine, DAG_ID, RUN_ID, out_dir=out_dir, fetch_image=fetch)
    seconds = time.perf_counter() - started
    cpu = time.process_time() - cpu
    if profiler is not None:
        profiler.stop()
        print(profiler.output_text(unicode=False, color=False, show_all=False), file=sys.stderr)
    return {
        "seconds": round(seconds, 3),
        "cpu_seconds": round(cpu, 3),  # this process's alone (not the PostgreSQL server's)
        "peak_rss_mib": peak_rss_mib(),
        "images": built.summary["images"],
        "completed": built.summary["completed"],
    }


def measure_backend(backend: str, count: int, workdir: Path, rounds: int = ROUNDS) -> dict:
    with warehouse(backend, workdir) as url:
        seeded = time.perf_counter()
        scan_rows = seed_run(url, count)
        seed_seconds = time.perf_counter() - seeded
        out_dir = workdir / f"report-{backend}"
        runs = [
            run_json(["bench.report", "--measure", "--warehouse", url, "--out-dir", str(out_dir)])
            for _ in range(rounds)
        ]
        close_seconds, standing_rows = measure_model_refresh(url)
    seconds = [run["seconds"] for run in runs]
    return {
        "seconds": statistics.median(seconds),
        "each": seconds,
        "cpu_seconds": statistics.median(run["cpu_seconds"] for run in runs),
        "peak_rss_mib": max(run["peak_rss_mib"] for run in runs),
        "images": runs[0]["images"],
        "completed": runs[0]["completed"],
        "scan_rows": scan_rows,
        "seed_seconds": round(seed_seconds, 1),
        "close_seconds": close_seconds,
        "standing_rows": standing_rows,
    }


def measure_model_refresh(url: str) -> tuple[float, int]:
    """The analytics model's recompute for the run, as the DAG's ``close_run`` does it when every scan
    of the run changed since the last refresh: wall time, and the image rows written."""
    from sqlalchemy import delete

    from image_audit.warehouse.analytics import refresh_changed
    from image_audit.warehouse.engine import get_engine
    from image_audit.warehouse.schema import analytics_refresh

    engine = get_engine(url)
    with engine.begin() as conn:  # the seeded scans are stamped days ago: read them all
        conn.execute(delete(analytics_refresh))
    started = time.perf_counter()
    with engine.begin() as conn:
        images, _ = refresh_changed(conn)
    return round(time.perf_counter() - started, 3), images


def main(count: int = 100_000) -> dict:
    backends = ["sqlite"] + (["postgres"] if postgres_admin_url() else [])
    figures: dict = {"images": count}
    targets = []
    with tempfile.TemporaryDirectory(prefix="bench-report-") as tmp:
        for backend in backends:
            m = measure_backend(backend, count, Path(tmp))
            figures[f"report on {backend}"] = (
                f"{m['seconds']} s (median of {m['each']}), CPU {m['cpu_seconds']} s (the report's "
                f"process, median), peak RSS {m['peak_rss_mib']} MiB; "
                f"{m['images']} images ({m['completed']} completed) from {m['scan_rows']} scans, "
                f"seeded in {m['seed_seconds']} s"
            )
            figures[f"analytics model on {backend}"] = (
                f"{m['close_seconds']} s to recompute {m['standing_rows']} images and their days "
                "(close_run, a task of its own: not in the report's time)"
            )
            figures[f"{backend} seconds"] = m["seconds"]
            figures[f"{backend} cpu_seconds"] = m["cpu_seconds"]
            figures[f"{backend} peak_rss_mib"] = m["peak_rss_mib"]
            if count >= 100_000:
                target = f"{count} images < {TARGET_SECONDS:g} s on {backend}"
                targets.append((target, m["seconds"] < TARGET_SECONDS))
    if "postgres" not in backends:
        print("  (PostgreSQL figures skipped: set IMAGE_AUDIT_BENCH_POSTGRES_URL)")
    return report("report", figures, targets)


def _cli() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.report", description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=100_000, help="images of the run (the benchmark)")
    parser.add_argument("--measure", action="store_true", help="build the seeded run's report once (JSON)")
    parser.add_argument("--warehouse", help="with --measure: the seeded warehouse")
    parser.add_argument("--out-dir", help="with --measure: where the report goes")
    parser.add_argument("--profile", action="store_true", help="with --measure: pyinstrument on stderr")
    parser.add_argument("--seed-only", help="seed --count images into this (migrated) warehouse URL and stop")
    args = parser.parse_args()
    if args.seed_only:
        from image_audit.warehouse.engine import get_engine
        from image_audit.warehouse.schema import migrate

        migrate(get_engine(args.seed_only))
        print(json.dumps({"scan_rows": seed_run(args.seed_only, args.count)}))
    elif args.measure:
        print(json.dumps(measure(args.warehouse, args.out_dir, args.profile)))
    else:
        main(args.count)


if __name__ == "__main__":
    _cli()
