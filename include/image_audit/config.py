"""Deployment settings read from the environment (the same in every Airflow component)."""

from __future__ import annotations

import os
from pathlib import Path

#: SQLAlchemy URL of the warehouse (catalog, scans, results, reports). Like Airflow's own
#: ``sql_alchemy_conn`` it is a URL in the environment, so the api-server plugin, the triggerer, the
#: workers and a standalone receiver all find the same database.
WAREHOUSE_URL_ENV = "IMAGE_AUDIT_WAREHOUSE_URL"
#: Where reports (HTML, CSV, Parquet) are written.
REPORTS_DIR_ENV = "IMAGE_AUDIT_REPORTS_DIR"


def airflow_home() -> Path:
    return Path(os.environ.get("AIRFLOW_HOME") or Path.home() / "airflow")


def warehouse_url() -> str:
    """The warehouse URL; the embedded default is a SQLite file in the Airflow home."""
    return os.environ.get(WAREHOUSE_URL_ENV) or f"sqlite:///{airflow_home() / 'image_audit_warehouse.db'}"


def reports_dir() -> Path:
    return Path(os.environ.get(REPORTS_DIR_ENV) or airflow_home() / "image_audit_reports")
