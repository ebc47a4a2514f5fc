"""Deployment settings: the warehouse connection and the environment (the same in every component)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from copyleaks_provider.connections import sqlalchemy_url

#: The Airflow connection of the warehouse (catalog, scans, results, reports): type ``postgres`` or
#: ``sqlite``, or any type whose extra holds ``{"sqlalchemy_url": ...}``. Like every resource of the
#: deployment it lives where connections do (the metadata database, ``AIRFLOW_CONN_IMAGE_AUDIT_WAREHOUSE``,
#: a secrets backend), so the workers, the triggerer, the api-server plugin and a standalone receiver
#: all find the same database, and Airflow masks its password. No such connection: the embedded SQLite.
DEFAULT_WAREHOUSE_CONN_ID = "image_audit_warehouse"
#: Where reports (HTML, CSV, Parquet) are written.
REPORTS_DIR_ENV = "IMAGE_AUDIT_REPORTS_DIR"


def airflow_home() -> Path:
    return Path(os.environ.get("AIRFLOW_HOME") or Path.home() / "airflow")


def warehouse_url(conn_id: str = DEFAULT_WAREHOUSE_CONN_ID) -> str:
    """The SQLAlchemy URL of warehouse connection ``conn_id``; without that connection, the embedded
    default, a SQLite file in the Airflow home. Blocking (a secrets backend may be asked): async code
    calls it in a thread."""
    from airflow.sdk import BaseHook
    from airflow.sdk.exceptions import AirflowNotFoundException

    try:
        connection = BaseHook.get_connection(conn_id)
    except AirflowNotFoundException:
        return _embedded_warehouse_url()
    return connection_url(connection)


async def warehouse_url_async(conn_id: str = DEFAULT_WAREHOUSE_CONN_ID) -> str:
    """:func:`warehouse_url` for the event loop (the triggerer, the receiver): Airflow's async lookup."""
    from airflow.sdk import BaseHook
    from airflow.sdk.exceptions import AirflowNotFoundException

    try:
        connection = await BaseHook.aget_connection(conn_id)
    except AirflowNotFoundException:
        return _embedded_warehouse_url()
    return connection_url(connection)


def _embedded_warehouse_url() -> str:
    return f"sqlite:///{airflow_home() / 'image_audit_warehouse.db'}"


def connection_url(connection) -> str:
    """The warehouse's SQLAlchemy URL from its Airflow connection."""
    url = sqlalchemy_url(connection)
    if url is None:
        raise ValueError(
            f"unsupported warehouse database {connection.conn_type!r} (connection {connection.conn_id!r}): "
            "use a postgres or sqlite connection, or put the SQLAlchemy URL in its extra as sqlalchemy_url"
        )
    return url


def reports_dir() -> Path:
    return Path(os.environ.get(REPORTS_DIR_ENV) or airflow_home() / "image_audit_reports")


#: The base URL of the reports, for Airflow's ObjectStoragePath: ``s3://bucket/prefix``, ``gs://...``,
#: ``file:///shared/reports`` (a path without a scheme is local). Unset: ``file://`` + :func:`reports_dir`.
REPORTS_URL_ENV = "IMAGE_AUDIT_REPORTS_URL"
#: The Airflow connection with the credentials of that store (e.g. type ``aws``). Unset: the store's own
#: default (for S3, boto's credential chain: the worker's IAM role, AWS_* variables).
REPORTS_CONN_ID_ENV = "IMAGE_AUDIT_REPORTS_CONN_ID"


def reports_url() -> str:
    """Where reports are written (each run's under ``<dag_id>/<run id made file-safe>/``)."""
    # ObjectStoragePath's spelling of a local URL: the absolute path after file://, not percent-encoded
    return os.environ.get(REPORTS_URL_ENV) or f"file://{os.path.abspath(reports_dir())}"


def reports_conn_id() -> str | None:
    return os.environ.get(REPORTS_CONN_ID_ENV) or None


def add_warehouse_arguments(parser: argparse.ArgumentParser) -> None:
    """``--url`` / ``--conn-id``: the warehouse a command line works on (default: the deployment's)."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--url", help="the warehouse's SQLAlchemy URL (default: the warehouse connection's)")
    group.add_argument("--conn-id", help="the warehouse connection (default: the deployment's)")


def warehouse_url_of(args: argparse.Namespace) -> str:
    """The warehouse named by :func:`add_warehouse_arguments`' arguments."""
    if args.url:
        return args.url
    return warehouse_url(args.conn_id) if args.conn_id else warehouse_url()
