"""The demo audit: the real DAG against the Copyleaks emulator on the embedded SQLite default.

``./run demo`` sets up a fresh local Airflow home under ./var/demo, starts the emulator and the webhook
receiver, seeds a sample catalog of generated images (with some deliberately bad rows), runs
``airflow dags test image_catalog_audit``, prints the report summary and where the report is, and
stops everything it started. Then the catalog's producer: ``airflow dags test catalog_ingestion`` (the
example in ``dev/dags``, a second DAG bundle) adds rows and updates the catalog's Asset, and the demo shows
the asset event queued for the audit, which a scheduler (``./run cluster``) would now start.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import shutil
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from image_audit_dev.bundles import BUNDLES_ENV, dag_bundle_config_list

ROOT = Path(__file__).resolve().parents[2]
DAG_ID = "image_catalog_audit"
PRODUCER_DAG_ID = "catalog_ingestion"
PRODUCER_ROWS = 5


def _airflow_env(home: Path, warehouse_url: str, connection: dict) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        AIRFLOW_HOME=str(home / "airflow"),
        AIRFLOW__CORE__LOAD_EXAMPLES="False",
        AIRFLOW__CORE__DAGS_FOLDER=str(ROOT / "dags"),
        # The audit DAG unpaused, as a deployment runs it: the producer's Asset event queues a run of it.
        AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION="False",
        AIRFLOW__CORE__PLUGINS_FOLDER=str(ROOT / "plugins"),
        AIRFLOW__LOGGING__LOGGING_LEVEL="INFO",
        AIRFLOW_CONN_IMAGE_AUDIT_WAREHOUSE=warehouse_url,
        IMAGE_AUDIT_REPORTS_DIR=str(home / "reports"),
        IMAGE_AUDIT_REPORT_ALLOW_PRIVATE_URLS="true",  # the demo's images are on the local emulator
        AIRFLOW_CONN_COPYLEAKS_DEFAULT=json.dumps(connection),
    )
    # Two DAG bundles: dags/ and dev/dags (catalog_ingestion, the example producer of the catalog's Asset).
    env[BUNDLES_ENV] = dag_bundle_config_list(ROOT / "dags")
    return env


def _airflow(args: list[str], env: dict[str, str], log_path: Path) -> None:
    with log_path.open("a") as log_file:
        completed = subprocess.run(
            [sys.executable, "-m", "airflow", *args], env=env, stdout=log_file, stderr=subprocess.STDOUT
        )
    if completed.returncode:
        tail = "".join(log_path.read_text().splitlines(keepends=True)[-40:])
        raise SystemExit(
            f"`airflow {' '.join(args)}` failed (exit {completed.returncode}); log: {log_path}\n{tail}"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=240, help="sample catalog size (default 240)")
    parser.add_argument("--home", type=Path, default=ROOT / "var" / "demo", help="demo state directory")
    args = parser.parse_args(argv)

    from sqlalchemy import select

    from copyleaks_emulator import EmulatorSettings, create_app
    from image_audit.warehouse.engine import get_engine
    from image_audit.warehouse.schema import audit_reports, audit_scans, migrate
    from image_audit.webhook import create_warehouse_receiver_app
    from image_audit_dev.sample_catalog import sample_catalog_rows, seed_catalog
    from image_audit_dev.servers import BackgroundServer

    started = time.monotonic()
    home = args.home.resolve()
    shutil.rmtree(home, ignore_errors=True)
    home.mkdir(parents=True)
    warehouse_url = f"sqlite:///{home / 'warehouse.db'}"
    log_path = home / "airflow.log"
    # The run audits yesterday's ingestions: its data interval is [midnight - 1 day, midnight).
    interval_end = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    interval_start = interval_end - timedelta(days=1)

    engine = get_engine(warehouse_url)
    migrate(engine)
    webhook_secret = secrets.token_urlsafe(32)
    emulator_settings = EmulatorSettings()
    email, api_key = next(iter(emulator_settings.accounts.items()))
    emulator = BackgroundServer(create_app(emulator_settings)).start()
    receiver = BackgroundServer(
        create_warehouse_receiver_app(warehouse_url=warehouse_url, webhook_secrets=[webhook_secret])
    ).start()
    try:
        print(f"Copyleaks emulator on {emulator.url}, webhook receiver on {receiver.url}")
        rows = sample_catalog_rows(f"{emulator.url}/samples", args.images, start=interval_start, days=1)
        seed_catalog(engine, rows)
        print(f"Seeded a catalog of {len(rows)} images ingested on {interval_start:%Y-%m-%d}")
        connection = {
            "conn_type": "copyleaks",
            "login": email,
            "password": api_key,
            "extra": {
                "identity_url": emulator.url,
                "api_url": emulator.url,
                "sandbox": False,
                "webhook_base_url": receiver.url,
                "webhook_secret": webhook_secret,
            },
        }
        env = _airflow_env(home, warehouse_url, connection)
        print("Setting up the Airflow home (airflow db migrate)...")
        _airflow(["db", "migrate"], env, log_path)
        print(f"Running the DAG: airflow dags test {DAG_ID} {interval_end:%Y-%m-%dT%H:%M:%S+00:00} ...")
        _airflow(["dags", "test", DAG_ID, interval_end.isoformat()], env, log_path)
    finally:
        receiver.stop()
        emulator.stop()

    with engine.connect() as conn:
        latest = audit_reports.c.created_at.desc()
        row = conn.execute(
            audit_reports.select().where(audit_reports.c.dag_id == DAG_ID).order_by(latest)
        ).first()
        problems = conn.execute(
            select(audit_scans.c.image_id, audit_scans.c.state, audit_scans.c.last_error)
            .where(audit_scans.c.state.in_(["rejected", "failed", "timed_out"]))
            .order_by(audit_scans.c.state, audit_scans.c.image_id)
        ).all()
    if row is None:
        raise SystemExit(f"the run wrote no report; see {log_path}")
    _print_summary(row.summary, problems)
    print(f"HTML report: {row.html_path}\nCSV: {row.csv_path}\nParquet: {row.parquet_path}")

    # The catalog's producer: new rows, then the Asset update the audit is scheduled on.
    conf = json.dumps({"rows": PRODUCER_ROWS})
    print(f"\nThe catalog's producer: airflow dags test {PRODUCER_DAG_ID} -c '{conf}' ...")
    _airflow(["dags", "test", PRODUCER_DAG_ID, "-c", conf], env, log_path)
    _print_asset_event(home / "airflow" / "airflow.db")
    print(f"\nDone in {time.monotonic() - started:.0f} s.")
    print(f"Airflow log: {log_path}")
    return 0


def _print_asset_event(metadata_db: Path) -> None:
    """The producer's Asset event and the audit run it queued, from Airflow's (SQLite) metadata database."""
    import sqlite3

    with contextlib.closing(sqlite3.connect(metadata_db)) as db:
        event = db.execute(
            "SELECT a.name, e.timestamp, e.extra FROM asset_event e JOIN asset a ON a.id = e.asset_id "
            "WHERE e.source_dag_id = ? ORDER BY e.id DESC LIMIT 1",
            (PRODUCER_DAG_ID,),
        ).fetchone()
        queued = db.execute(
            "SELECT q.target_dag_id FROM asset_dag_run_queue q JOIN asset a ON a.id = q.asset_id "
            "WHERE a.name = ?",
            (event[0] if event else None,),
        ).fetchall()
    if event is None:
        raise SystemExit(f"{PRODUCER_DAG_ID} emitted no Asset event")
    name, timestamp, extra = event
    rows = json.loads(extra or "{}").get("rows")
    print(f"  {rows} catalog rows committed; Asset {name!r} updated at {timestamp[:19]} UTC")
    targets = sorted(target for (target,) in queued)
    print(f"  asset event queued for: {', '.join(targets) or 'no DAG'} (scheduled on {name!r} or 00:00 UTC)")
    print(f"  `airflow dags test` runs no scheduler, so no {DAG_ID} run starts here.")
    print(f"  `./run cluster` runs one: there each {PRODUCER_DAG_ID} run starts an {DAG_ID} run")
    print("  that audits just the new rows.")


def _print_summary(summary: dict, problems) -> None:
    states, verdicts, credits = summary["states"], summary["verdicts"], summary["credits"]
    print(f"\nAudited {summary['images']} images ingested on {summary['data_interval_start'][:10]}:")
    print("  states:   " + ", ".join(f"{name} {n}" for name, n in states.items() if n))
    print("  verdicts: " + ", ".join(f"{name.replace('_', ' ')} {n}" for name, n in verdicts.items()))
    print(f"  credits:  {credits['actual']} spent of {credits['expected']} expected")
    if problems:
        print("  rows needing attention:")
        for image_id, state, reason in problems:
            print(f"    {state:<9} {image_id or '(no id)'}: {reason}")


if __name__ == "__main__":
    sys.exit(main())
