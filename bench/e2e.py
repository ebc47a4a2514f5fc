"""The real DAG end to end against the emulator, side by side with its floor and with the
naive DAG users write first; and the footprint of the run.

Each contender gets a fresh emulator (its own process, zero injected latency) and the same N sample
images. The DAG runs as users run it on one machine, ``airflow dags test``, in its own process, with
the webhook receiver in another (``python -m image_audit.webhook``) on the same warehouse.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import func, select

from bench.common import (
    EMULATOR_ARGS,
    RESULTS_DIR,
    ROOT,
    postgres_admin_url,
    redis_url,
    report,
    run_json,
    server_process,
    warehouse,
)
from image_audit.warehouse.engine import get_engine
from image_audit.warehouse.schema import audit_results, audit_scans
from image_audit_dev.sample_catalog import sample_catalog_rows, seed_catalog

EMAIL, API_KEY = "bench@image-audit.dev", "bench-api-key"
#: The daily interval every contender audits; its catalog rows are ingested inside it.
DAY = datetime(2026, 11, 20, tzinfo=UTC)
DAG_ID = "image_catalog_audit"
NAIVE_DAG_ID = "naive_image_audit"
CONCURRENCY = 16  # the connection's default max_concurrency, given to the floor too


@dataclass
class Deployment:
    emulator: str
    receiver: str
    warehouse: str
    env: dict[str, str]


@contextlib.contextmanager
def deployment(backend: str, workdir: Path, dags_folder: Path = ROOT / "dags") -> Iterator[Deployment]:
    """A fresh emulator, a warehouse, a receiver on it, and the Airflow environment wired to them."""
    secret = secrets.token_urlsafe(24)
    workdir.mkdir(parents=True, exist_ok=True)
    with (
        server_process([*EMULATOR_ARGS, "--account", f"{EMAIL}:{API_KEY}"]) as emulator,
        warehouse(backend, workdir) as url,
    ):
        connection = {
            "conn_type": "copyleaks",
            "login": "x",
            "password": "x",
            "extra": {"webhook_secret": secret},
        }
        receiver_env = {
            "AIRFLOW_CONN_IMAGE_AUDIT_WAREHOUSE": url,
            "AIRFLOW_CONN_COPYLEAKS_DEFAULT": json.dumps(connection),
        }
        with server_process(["image_audit.webhook"], receiver_env) as receiver:
            connection = {
                "conn_type": "copyleaks",
                "login": EMAIL,
                "password": API_KEY,
                "extra": {
                    "identity_url": emulator,
                    "api_url": emulator,
                    "webhook_base_url": receiver,
                    "webhook_secret": secret,
                    "requests_per_second": 0,  # the account budget is lifted: this measures overhead
                },
            }
            env = {
                "AIRFLOW_HOME": str(workdir / "airflow"),
                "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
                "AIRFLOW__CORE__DAGS_FOLDER": str(dags_folder),
                "AIRFLOW__CORE__PLUGINS_FOLDER": str(ROOT / "plugins"),
                "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
                "AIRFLOW_CONN_IMAGE_AUDIT_WAREHOUSE": url,
                "IMAGE_AUDIT_REPORTS_DIR": str(workdir / "reports"),
                "IMAGE_AUDIT_REPORT_ALLOW_PRIVATE_URLS": "true",  # the images are on the local emulator
                "AIRFLOW_CONN_COPYLEAKS_DEFAULT": json.dumps(connection),
            }
            yield Deployment(emulator, receiver, url, env)


def seed(deployed: Deployment, count: int) -> None:
    rows = sample_catalog_rows(f"{deployed.emulator}/samples", count, start=DAY, bad_rows=False)
    seed_catalog(get_engine(deployed.warehouse), rows)


def airflow(args: list[str], env: dict[str, str], log: Path) -> tuple[float, int]:
    """Run ``airflow <args>``; returns its wall time and its peak RSS in KiB (``dags test`` runs every
    task in its own process, so that is the largest any task of the run reached)."""
    started = time.perf_counter()
    with log.open("a") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "airflow", *args],
            env={**os.environ, **env},
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        _, status, usage = os.wait4(process.pid, 0)
    elapsed = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status):
        raise RuntimeError(f"airflow {' '.join(args)} failed; see {log}")
    return elapsed, usage.ru_maxrss


def run_dag(deployed: Deployment, dag_id: str, workdir: Path) -> dict:
    """``airflow dags test`` of ``dag_id`` for DAY's interval, timed, and the run's footprint."""
    log = workdir / f"{dag_id}.log"
    airflow(["db", "migrate"], deployed.env, log)
    logical = (DAY + timedelta(days=1)).isoformat()
    started_at = datetime.now(UTC)
    elapsed, peak_rss_kib = airflow(["dags", "test", dag_id, logical], deployed.env, log)
    with sqlite3.connect(workdir / "airflow" / "airflow.db") as meta:
        (run_id, state) = meta.execute(
            "SELECT run_id, state FROM dag_run WHERE dag_id = ?", (dag_id,)
        ).fetchone()
        task_instances = meta.execute(
            "SELECT count(*) FROM task_instance WHERE dag_id = ? AND run_id = ?", (dag_id, run_id)
        ).fetchone()[0]
        xcom_bytes = meta.execute(
            "SELECT coalesce(sum(length(value)), 0) FROM xcom WHERE dag_id = ? AND run_id = ?",
            (dag_id, run_id),
        ).fetchone()[0]
        spans = meta.execute(
            "SELECT task_id, min(start_date), max(end_date) FROM task_instance"
            " WHERE dag_id = ? AND run_id = ? GROUP BY task_id ORDER BY min(start_date)",
            (dag_id, run_id),
        ).fetchall()
    kept = RESULTS_DIR / "logs" / f"{dag_id}-{workdir.name}.log"
    kept.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(log, kept)
    with get_engine(deployed.warehouse).connect() as conn:
        results = conn.execute(select(func.count()).select_from(audit_results)).scalar_one()
        completed = conn.execute(
            select(func.count()).select_from(audit_scans).where(audit_scans.c.state == "completed")
        ).scalar_one()
    return {
        "wall_s": round(elapsed, 1),
        "state": state,
        "results": results,
        "completed_scans": completed,
        "task_instances": task_instances,
        "xcom_bytes": xcom_bytes,
        "peak_rss_mib": round(peak_rss_kib / 1024),
        "deferred": "running trigger in line" in log.read_text(),
        "phases_s": _phases(spans, started_at, elapsed),
    }


def _phases(spans: list[tuple], started_at: datetime, elapsed: float) -> dict[str, float]:
    """Seconds per task (first start to last end, mapped tries together) and the time around them:
    ``startup`` before the first task, ``gaps`` between tasks, ``shutdown`` after the last."""
    phases: dict[str, float] = {}
    previous_end = started_at
    gaps = 0.0
    for task_id, start, end in spans:
        start, end = (datetime.fromisoformat(v).replace(tzinfo=UTC) for v in (start, end))
        if task_id == spans[0][0]:
            phases["startup"] = round((start - started_at).total_seconds(), 1)
        else:
            gaps += max((start - previous_end).total_seconds(), 0.0)
        phases[task_id] = round((end - start).total_seconds(), 1)
        previous_end = max(previous_end, end)
    phases["gaps"] = round(gaps, 1)
    phases["shutdown"] = round(elapsed - (previous_end - started_at).total_seconds(), 1)
    return phases


def run_floor(deployed: Deployment, count: int) -> dict:
    args = ["--api", deployed.emulator, "--email", EMAIL, "--key", API_KEY]
    args += [
        "--samples",
        f"{deployed.emulator}/samples",
        "--count",
        str(count),
        "--concurrency",
        str(CONCURRENCY),
    ]
    return run_json(["bench.floor", *args])


def compare_with_floor(count: int, backend: str = "sqlite") -> dict:
    with tempfile.TemporaryDirectory(prefix="bench-e2e-") as tmp:
        with deployment(backend, Path(tmp) / "floor") as deployed:
            floor = run_floor(deployed, count)
        with deployment(backend, Path(tmp) / "dag") as deployed:
            seed(deployed, count)
            dag = run_dag(deployed, DAG_ID, Path(tmp) / "dag")
    dag["ratio_to_floor"] = round(dag["wall_s"] / floor["elapsed_s"], 2)
    return {"floor": floor, "dag": dag}


def compare_with_naive(count: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench-naive-") as tmp:
        with deployment("sqlite", Path(tmp) / "ours") as deployed:
            seed(deployed, count)
            ours = run_dag(deployed, DAG_ID, Path(tmp) / "ours")
        naive_dags = Path(__file__).parent / "naive_dags"
        with deployment("sqlite", Path(tmp) / "naive", dags_folder=naive_dags) as deployed:
            seed(deployed, count)
            naive = run_dag(deployed, NAIVE_DAG_ID, Path(tmp) / "naive")
    return {"ours": ours, "naive": naive, "speedup": round(naive["wall_s"] / ours["wall_s"], 1)}


def _run_on_cluster(cluster, dag_id: str, day: datetime, timeout: float = 3600) -> dict:
    """Trigger ``dag_id`` for ``day``'s interval through the REST API; time it until it finishes, and
    watch its task instances meanwhile (how many run at once, whether the wait is deferred)."""
    import httpx

    started = time.perf_counter()
    run_id = cluster.trigger_dag_run(dag_id, (day + timedelta(days=1)).isoformat())
    url = f"{cluster.api_url}/api/v2/dags/{dag_id}/dagRuns/{run_id}"
    wait_states: set[str] = set()
    running_while_deferred = 0

    def watch_the_wait() -> None:
        nonlocal running_while_deferred
        wait = httpx.get(f"{url}/taskInstances/wait_for_results", timeout=10).json()
        wait_states.add(str(wait.get("state")))
        if wait.get("state") == "deferred":
            running = httpx.get(f"{url}/taskInstances", params={"state": "running"}, timeout=10).json()
            running_while_deferred = max(running_while_deferred, running["total_entries"])

    watch = watch_the_wait if dag_id == DAG_ID else None
    state = cluster.wait_for_run(dag_id, run_id, timeout=timeout, poll=0.5, while_running=watch)
    elapsed = time.perf_counter() - started
    tis = httpx.get(f"{url}/taskInstances", params={"limit": 1}, timeout=10).json()["total_entries"]
    return {
        "wall_s": round(elapsed, 1),
        "state": state,
        "task_instances": tis,
        "wait_states_seen": sorted(wait_states),
        "running_while_deferred": running_while_deferred,
    }


def compare_with_naive_on_cluster(count: int) -> dict | None:
    """Both DAGs on the real topology (scheduler, triggerer, Celery worker, api-server; PostgreSQL and
    Redis), one after the other, each on its own day of the same images. ``None`` without the URLs."""
    from image_audit_dev.cluster import LocalCluster

    redis = redis_url()
    if not (postgres_admin_url() and redis):
        return None
    ours_day, naive_day = DAY, DAY + timedelta(days=1)
    with tempfile.TemporaryDirectory(prefix="bench-cluster-") as tmp:
        dags = Path(tmp) / "dags"
        dags.mkdir()
        (dags / "image_catalog_audit.py").symlink_to(ROOT / "dags" / "image_catalog_audit.py")
        (dags / "naive_image_audit.py").symlink_to(
            Path(__file__).parent / "naive_dags" / "naive_image_audit.py"
        )
        cluster = LocalCluster(
            postgres_url=postgres_admin_url(),
            redis_url=redis.rsplit("/", 1)[0] + "/6",
            home=Path(tmp) / "cluster",
            name=f"ia_bench_{secrets.token_hex(4)}",
            dags_folder=dags,
            account_requests_per_second=0,  # overhead, not the account budget (bench account_rate)
        )
        try:
            with cluster:
                samples = f"{cluster.emulator_url}/samples"
                engine = get_engine(cluster.warehouse_url)
                seed_catalog(engine, sample_catalog_rows(samples, count, start=ours_day, bad_rows=False))
                naive_rows = sample_catalog_rows(samples, count, start=naive_day, bad_rows=False)
                for row in naive_rows:  # the same images under other ids: other scan ids
                    row["image_id"] = f"naive-{row['image_id']}"
                seed_catalog(engine, naive_rows)
                ours = _run_on_cluster(cluster, DAG_ID, ours_day)
                naive = _run_on_cluster(cluster, NAIVE_DAG_ID, naive_day)
                with engine.connect() as conn:
                    results = conn.execute(select(func.count()).select_from(audit_results)).scalar_one()
        finally:
            cluster.drop_databases()
    return {
        "ours": ours,
        "naive": naive,
        "results": results,
        "speedup": round(naive["wall_s"] / ours["wall_s"], 1),
    }


def main(
    sizes: tuple[int, ...] = (1_000, 10_000),
    naive_count: int = 1_000,
    backend: str = "sqlite",
    on_cluster: bool = True,
    repeats: int = 3,
    name: str = "e2e",
) -> dict:
    """Each size runs ``repeats`` times (floor, then DAG): the figure is the median ratio, and each run.
    ``name`` names the saved figures (``e2e_large`` for the 100,000-image run, kept apart)."""
    figures: dict = {}
    targets = []
    for count in sizes:
        runs = [compare_with_floor(count, backend) for _ in range(repeats)]
        ratios = [run["dag"]["ratio_to_floor"] for run in runs]
        median = statistics.median(ratios)
        for i, measured in enumerate(runs, 1):
            dag, floor = measured["dag"], measured["floor"]
            figures[f"{count} images, run {i}"] = (
                f"DAG {dag['wall_s']} s vs floor {floor['elapsed_s']} s = {dag['ratio_to_floor']} x floor; "
                f"state {dag['state']}, {dag['results']} results, {dag['task_instances']} task instances, "
                f"{dag['xcom_bytes']} XCom bytes, peak RSS {dag['peak_rss_mib']} MiB, "
                f"wait deferred: {dag['deferred']}; phases (s): {dag['phases_s']}"
            )
        figures[f"{count} images, median DAG / floor of {repeats}"] = f"{median} x"
        complete = all(
            run["dag"]["state"] == "success"
            and run["dag"]["results"] == run["dag"]["completed_scans"] == count
            for run in runs
        )
        targets.append((f"{count}: every image has its result, every run", complete))
        if count >= 10_000:
            targets.append((f"{count}: median DAG <= 1.25 x floor", median <= 1.25))
            deferred = all(run["dag"]["deferred"] for run in runs)
            targets.append((f"{count}: no worker slot held while waiting (deferred)", deferred))
        if count == 10_000:  # the footprint targets are per 10,000-image run (more images, more batches)
            dag = runs[0]["dag"]
            targets.append((f"{count}: <= 30 task instances", dag["task_instances"] <= 30))
            targets.append((f"{count}: XCom < 10 KB", dag["xcom_bytes"] < 10_000))
    if naive_count:
        naive = compare_with_naive(naive_count)
        figures[f"{naive_count} images, naive DAG (dags test)"] = (
            f"{naive['naive']['wall_s']} s, {naive['naive']['task_instances']} task instances, "
            f"{naive['naive']['xcom_bytes']} XCom bytes, {naive['naive']['results']} results"
        )
        figures[f"{naive_count} images, ours (dags test)"] = f"{naive['ours']['wall_s']} s"
        figures[f"{naive_count} images, speedup over naive (dags test)"] = f"{naive['speedup']} x"
        clustered = compare_with_naive_on_cluster(naive_count) if on_cluster else None
        if on_cluster and clustered is None:
            figures[f"{naive_count} images, speedup over naive (cluster)"] = (
                "not run: set IMAGE_AUDIT_BENCH_POSTGRES_URL and IMAGE_AUDIT_BENCH_REDIS_URL"
            )
        elif clustered is not None:
            ours, naive = clustered["ours"], clustered["naive"]
            figures[f"{naive_count} images, naive DAG (cluster)"] = (
                f"{naive['wall_s']} s, state {naive['state']}, {naive['task_instances']} task instances"
            )
            figures[f"{naive_count} images, ours (cluster)"] = (
                f"{ours['wall_s']} s, state {ours['state']}, {ours['task_instances']} task instances, "
                f"wait_for_results seen {ours['wait_states_seen']}, "
                f"task instances running while it was deferred: {ours['running_while_deferred']}"
            )
            figures[f"{naive_count} images, speedup over naive (cluster)"] = f"{clustered['speedup']} x"
            both = ours["state"] == naive["state"] == "success" and clustered["results"] == 2 * naive_count
            targets.append((f"cluster: both DAGs stored all {2 * naive_count} results", both))
            targets.append(
                (f"{naive_count}: >= 20 x faster than the naive DAG (cluster)", clustered["speedup"] >= 20)
            )
            targets.append(("cluster: no worker slot held while waiting", ours["running_while_deferred"] == 0
                            and "deferred" in ours["wait_states_seen"]))  # fmt: skip
    return report(name, figures, targets)


if __name__ == "__main__":
    main()
