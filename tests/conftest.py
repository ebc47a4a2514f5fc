"""Shared fixtures: an isolated Airflow home, warehouses on SQLite and (when configured) PostgreSQL."""

from __future__ import annotations

import atexit
import contextlib
import os
import secrets
import shutil
import tempfile
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

pytest_plugins = ["tests.emulator_fixtures"]

ROOT = Path(__file__).resolve().parents[1]
_HOME = Path(tempfile.mkdtemp(prefix="image-audit-tests-"))
atexit.register(shutil.rmtree, _HOME, ignore_errors=True)
# Airflow reads these at import time: set them before any test module imports airflow.
os.environ["AIRFLOW_HOME"] = str(_HOME / "airflow")
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(ROOT / "dags")
os.environ["AIRFLOW__CORE__PLUGINS_FOLDER"] = str(ROOT / "plugins")
os.environ["AIRFLOW__CORE__UNIT_TEST_MODE"] = "False"
os.environ["AIRFLOW_CONN_IMAGE_AUDIT_WAREHOUSE"] = f"sqlite:///{_HOME / 'warehouse.db'}"
os.environ["IMAGE_AUDIT_REPORTS_DIR"] = str(_HOME / "reports")
# The tests' catalogs point at the emulator on loopback: the report may fetch their thumbnails there.
os.environ["IMAGE_AUDIT_REPORT_ALLOW_PRIVATE_URLS"] = "true"

POSTGRES_URL = os.environ.get("IMAGE_AUDIT_TEST_POSTGRES_URL")
REDIS_URL = os.environ.get("IMAGE_AUDIT_TEST_REDIS_URL")

requires_postgres = pytest.mark.skipif(
    not POSTGRES_URL, reason="set IMAGE_AUDIT_TEST_POSTGRES_URL to run the PostgreSQL tests"
)


def _new_sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / f'warehouse-{uuid.uuid4().hex[:8]}.db'}"


class _PostgresDatabases:
    """Creates a throw-away database per test on the configured server, and drops it afterwards."""

    def __init__(self, admin_url: str):
        from sqlalchemy import create_engine
        from sqlalchemy.engine import make_url

        self._admin_url = make_url(admin_url)
        self._admin = create_engine(
            self._admin_url.set(drivername="postgresql+psycopg2"), isolation_level="AUTOCOMMIT"
        )

    def create(self) -> str:
        from sqlalchemy import text

        name = f"image_audit_test_{uuid.uuid4().hex[:12]}"
        with self._admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        return self._admin_url.set(database=name).render_as_string(hide_password=False)

    def drop(self, url: str) -> None:
        from sqlalchemy import text
        from sqlalchemy.engine import make_url

        from image_audit.warehouse.engine import dispose_engines

        dispose_engines()
        name = make_url(url).database
        with self._admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(scope="session")
def postgres_databases():
    if not POSTGRES_URL:
        pytest.skip("set IMAGE_AUDIT_TEST_POSTGRES_URL to run the PostgreSQL tests")
    return _PostgresDatabases(POSTGRES_URL)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=[pytest.mark.postgres, requires_postgres])])
def warehouse_url(request, tmp_path, monkeypatch):
    """An empty, migrated warehouse on SQLite and on PostgreSQL; also set as the configured warehouse."""
    from image_audit.warehouse.engine import dispose_engines, get_engine
    from image_audit.warehouse.schema import migrate

    if request.param == "sqlite":
        url = _new_sqlite_url(tmp_path)
        cleanup = None
    else:
        databases = request.getfixturevalue("postgres_databases")
        url = databases.create()
        cleanup = databases.drop
    monkeypatch.setenv("AIRFLOW_CONN_IMAGE_AUDIT_WAREHOUSE", url)
    migrate(get_engine(url))
    yield url
    if cleanup:
        cleanup(url)
    else:
        dispose_engines()


@pytest.fixture
def sqlite_warehouse_url(tmp_path, monkeypatch):
    """Just the SQLite warehouse, for tests whose subject is not the database."""
    from image_audit.warehouse.engine import get_engine
    from image_audit.warehouse.schema import migrate

    url = _new_sqlite_url(tmp_path)
    monkeypatch.setenv("AIRFLOW_CONN_IMAGE_AUDIT_WAREHOUSE", url)
    migrate(get_engine(url))
    yield url
    get_engine(url).dispose()


@pytest.fixture(scope="session")
def airflow_db():
    """The tests' Airflow metadata database (SQLite in the temporary AIRFLOW_HOME), migrated once."""
    import subprocess
    import sys

    subprocess.run([sys.executable, "-m", "airflow", "db", "migrate"], check=True, capture_output=True)
    return os.environ["AIRFLOW_HOME"]


# --- the wired deployment the DAG tests run against (emulator + receiver + connection) --------------
DAY = datetime(2026, 11, 20, tzinfo=UTC)


@pytest.fixture
def audit(warehouse_url, emulator, airflow_db, monkeypatch):
    """A wired deployment: the emulator as Copyleaks, a receiver on the test warehouse, the connection."""
    with wired_audit(warehouse_url, emulator, monkeypatch) as deployment:
        yield deployment


@contextlib.contextmanager
def wired_audit(warehouse_url: str, emulator, monkeypatch, *, receiver_warehouse_url: str | None = None):
    """Start a receiver and point the Copyleaks connection at the emulator and it.

    ``receiver_warehouse_url``: the receiver's own way to the warehouse (e.g. through a TCP proxy).
    """
    from image_audit.warehouse.engine import get_engine
    from image_audit.webhook import create_warehouse_receiver_app
    from image_audit_dev.servers import BackgroundServer
    from tests.emulator_fixtures import copyleaks_connection

    secret = secrets.token_urlsafe(16)
    app = create_warehouse_receiver_app(
        warehouse_url=receiver_warehouse_url or warehouse_url, webhook_secrets=[secret]
    )
    receiver = BackgroundServer(app)
    with receiver:
        connection = copyleaks_connection(emulator, receiver.url, secret, max_concurrency=8)
        monkeypatch.setenv("AIRFLOW_CONN_COPYLEAKS_DEFAULT", connection)
        yield _Audit(get_engine(warehouse_url), emulator, receiver, secret)


class _Audit:
    """Handles on a wired deployment: seed the catalog, run the DAG, read the warehouse."""

    def __init__(self, engine, emulator, receiver, secret: str):
        self.engine = engine
        self.emulator = emulator
        self.receiver = receiver  # stop()/start() it to restart on the same port
        self.secret = secret

    def seed(self, n: int, days: int = 1, bad_rows: bool = True) -> list[dict]:
        from image_audit_dev.sample_catalog import sample_catalog_rows, seed_catalog

        rows = sample_catalog_rows(f"{self.emulator.url}/samples", n, start=DAY, days=days, bad_rows=bad_rows)
        seed_catalog(self.engine, rows)
        return rows

    def run(self, day: datetime, **conf):
        """One DAG run auditing ``[day, day + 1)``; returns the finished DagRun."""
        from airflow.dag_processing.dagbag import DagBag

        dag = DagBag().get_dag("image_catalog_audit")
        logical = day + timedelta(days=1)  # the daily interval ending at `logical`
        return dag.test(logical_date=logical, run_conf=conf or None)

    def scans(self) -> list[dict]:
        from sqlalchemy import select

        from image_audit.warehouse.schema import audit_scans

        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(select(audit_scans)).mappings()]

    def results(self) -> list[dict]:
        from sqlalchemy import select

        from image_audit.warehouse.schema import audit_results

        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(select(audit_results)).mappings()]

    def report(self, run_id: str) -> dict:
        from sqlalchemy import select

        from image_audit.warehouse.schema import audit_reports

        with self.engine.connect() as conn:
            row = conn.execute(select(audit_reports).where(audit_reports.c.run_id == run_id)).mappings().one()
        return dict(row)


# --- pytest-xdist (./run test): the workers' share of the tests ------------------------------------
@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """Tests go to the workers one by one, except the reliability suite, which runs whole and in order in
    one worker: its secret scan comes last and looks through what that process's runs wrote. (xdist's
    ``loadgroup`` would do this, but its marks are lost with pytest 9's computed node ids.)"""
    from xdist.scheduler import LoadScopeScheduling

    class ReliabilitySuiteTogether(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return "tests/reliability" if nodeid.startswith("tests/reliability/") else nodeid

    return ReliabilitySuiteTogether(config, log)


# --- the reliability suite's figures: printed here, in the root conftest, because pytest-xdist's
# controller loads only this one; the worker that ran the suite hands its figures over.
def pytest_sessionfinish(session) -> None:
    """In a pytest-xdist worker: hand the reliability figures to the controller, which prints them."""
    if hasattr(session.config, "workeroutput"):
        from tests.reliability.conftest import FIGURES

        session.config.workeroutput["reliability_figures"] = dict(FIGURES)


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error) -> None:
    """pytest-xdist's controller: add up the figures of each worker."""
    from tests.reliability.conftest import FIGURES

    FIGURES.update(getattr(node, "workeroutput", {}).get("reliability_figures", {}))


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    from tests.reliability.conftest import FIGURE_ORDER, FIGURES

    if not FIGURES:
        return
    terminalreporter.section("reliability figures")
    for name in FIGURE_ORDER:
        terminalreporter.write_line(f"{name.replace('_', ' ')}: {FIGURES[name]}")
    for name in sorted(set(FIGURES) - set(FIGURE_ORDER)):
        terminalreporter.write_line(f"  {name.replace('_', ' ')}: {FIGURES[name]}")
