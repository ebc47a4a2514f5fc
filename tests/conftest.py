"""The test session: an isolated Airflow home set before anything imports Airflow, the fixture plugins of
tests/support, and the reliability figures printed at the end of the run."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import pytest

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

# The support package's asserts (check_invariants...) report like a test's.
pytest.register_assert_rewrite("tests.support")
# Fixtures: warehouses and the Airflow metadata database; the emulator and a webhook recorder; the wired
# deployment the DAG tests run; the SMTP server and the recording notifier the alerts are sent to.
pytest_plugins = [
    "tests.support.warehouse",
    "tests.support.emulator",
    "tests.support.deployment",
    "tests.support.alerts",
]


# --- the reliability suite's figures: printed here, in the root conftest, because pytest-xdist's
# controller loads only this one; each worker hands over the figures its tests added up.
def pytest_sessionfinish(session) -> None:
    """In a pytest-xdist worker: hand the reliability figures to the controller, which prints them."""
    if hasattr(session.config, "workeroutput"):
        from tests.support.reliability import FIGURES

        session.config.workeroutput["reliability_figures"] = dict(FIGURES)


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error) -> None:
    """pytest-xdist's controller: add up the figures of each worker."""
    from tests.support.reliability import FIGURES

    FIGURES.update(getattr(node, "workeroutput", {}).get("reliability_figures", {}))


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    from tests.support.reliability import FIGURE_ORDER, FIGURES

    if not FIGURES:
        return
    terminalreporter.section("reliability figures")
    for name in FIGURE_ORDER:
        terminalreporter.write_line(f"{name.replace('_', ' ')}: {FIGURES[name]}")
    for name in sorted(set(FIGURES) - set(FIGURE_ORDER)):
        terminalreporter.write_line(f"  {name.replace('_', ' ')}: {FIGURES[name]}")
