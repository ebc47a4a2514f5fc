"""Webhook ingest: durable callbacks per second and p50/p99 latency, on SQLite and PostgreSQL,
against a bare FastAPI endpoint that writes nothing, with the same load generator, side by side.

The receiver runs as a public edge runs it (``python -m image_audit.webhook``), the generator
in a third process. Every 200 is checked afterwards: as many result rows as callbacks, none twice.
"""

from __future__ import annotations

import json
import secrets
import tempfile
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import func, select

from bench.callbacks import scan_ids
from bench.common import postgres_admin_url, report, run_json, server_process, warehouse
from image_audit.warehouse.engine import get_engine
from image_audit.warehouse.schema import audit_results, audit_scans

TARGET_PER_SECOND = 1_500  # on PostgreSQL
TARGET_P99_MS = 50
#: Callbacks sent before measuring: a long-running receiver's steady state, not its cold start.
WARMUP = 256


def seed_submitted(url: str, ids: list[str]) -> None:
    now = datetime.now(UTC)
    rows = [
        {
            "scan_id": scan_id,
            "image_id": f"image-{scan_id}",
            "model": "ai-image-1-ultra-01-09-2025",
            "attempt": 1,
            "state": "submitted",
            "dag_id": "bench",
            "run_id": "bench",
            "created_at": now,
            "updated_at": now,
        }
        for scan_id in ids
    ]
    with get_engine(url).begin() as conn:
        for i in range(0, len(rows), 5_000):
            conn.execute(audit_scans.insert(), rows[i : i + 5_000])


def _load(base: str, secret: str, count: int, concurrency: int) -> dict:
    args = ["--base", base, "--secret", secret, "--count", str(count), "--concurrency", str(concurrency)]
    args += ["--warmup", str(WARMUP)]
    return run_json(["bench.loadgen", *args])


def measure_receiver(backend: str, count: int, concurrency: int, workdir: Path) -> dict:
    with warehouse(backend, workdir) as url:
        seed_submitted(url, scan_ids(WARMUP, "warm-up") + scan_ids(count))
        secret = secrets.token_urlsafe(16)
        connection = {
            "conn_type": "copyleaks",
            "login": "a@b.c",
            "password": "k",
            "extra": {"webhook_secret": secret},
        }
        env = {
            "AIRFLOW_CONN_IMAGE_AUDIT_WAREHOUSE": url,
            "AIRFLOW_CONN_COPYLEAKS_DEFAULT": json.dumps(connection),
        }
        with server_process(["image_audit.webhook"], env) as base:
            figures = _load(base, secret, count, concurrency)
        with get_engine(url).connect() as conn:
            rows, distinct = conn.execute(
                select(func.count(), func.count(audit_results.c.scan_id.distinct()))
            ).one()
    figures["results_stored"] = rows
    figures["durable"] = rows == distinct == figures["ok"] + WARMUP == count + WARMUP
    return figures


def measure_bare(count: int, concurrency: int) -> dict:
    with server_process(["bench.bare_endpoint"]) as base:
        return _load(base, "unused", count, concurrency)


def main(count: int = 10_000, concurrency: int = 32) -> dict:
    backends = ["sqlite"] + (["postgres"] if postgres_admin_url() else [])
    figures: dict = {"callbacks": count, "concurrency": concurrency}
    targets = []
    with tempfile.TemporaryDirectory(prefix="bench-ingest-") as tmp:
        bare = measure_bare(count, concurrency)
        figures["bare endpoint"] = _line(bare)
        for backend in backends:
            measured = measure_receiver(backend, count, concurrency, Path(tmp))
            figures[f"receiver on {backend}"] = _line(measured)
            figures[f"receiver/bare on {backend}"] = round(measured["per_second"] / bare["per_second"], 3)
            targets.append((f"every 200 durable, none twice on {backend}", measured["durable"]))
            if backend == "postgres":
                targets.append(
                    (f">= {TARGET_PER_SECOND}/s on PostgreSQL", measured["per_second"] >= TARGET_PER_SECOND)
                )
                targets.append(
                    (f"p99 < {TARGET_P99_MS} ms on PostgreSQL", measured["p99_ms"] < TARGET_P99_MS)
                )
    if "postgres" not in backends:
        print("  (PostgreSQL figures skipped: set IMAGE_AUDIT_BENCH_POSTGRES_URL)")
    return report("ingest", figures, targets)


def _line(m: dict) -> str:
    return f"{m['per_second']}/s, p50 {m['p50_ms']} ms, p99 {m['p99_ms']} ms, statuses {m['statuses']}"


if __name__ == "__main__":
    main()
