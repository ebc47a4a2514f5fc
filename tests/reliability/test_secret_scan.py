"""No secret anywhere a user or analyst can read: task logs, XCom, the warehouse, report files.

Runs last in the suite (see conftest): it runs one faulty DAG run of its own, then looks for every
API key, access token and webhook secret the suite's deployments used, in the test output, the test
AIRFLOW_HOME's logs, the Airflow XCom and rendered-fields tables, every text column of this warehouse,
and every report file written in the session.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest
from sqlalchemy import MetaData, select

from tests.conftest import DAY
from tests.reliability.conftest import FIGURES, SECRETS_USED, check_invariants
from tests.reliability.test_faults import API_FAULTS

pytestmark = pytest.mark.slow


def _files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file()] if root.is_dir() else []


def _airflow_tables_text(home: Path) -> str:
    with sqlite3.connect(home / "airflow.db") as conn:
        rows = conn.execute("SELECT value FROM xcom").fetchall()
        rows += conn.execute("SELECT rendered_fields FROM rendered_task_instance_fields").fetchall()
    return "\n".join(str(v) for row in rows for v in row)


def _warehouse_text(engine) -> str:
    metadata = MetaData()
    metadata.reflect(engine)
    chunks = []
    with engine.connect() as conn:
        for table in metadata.sorted_tables:
            for row in conn.execute(select(table)):
                chunks.extend(str(v) for v in row if v is not None)
    return "\n".join(chunks)


def test_no_secret_in_logs_xcom_warehouse_or_reports(audit, capfd, caplog):
    audit.seed(20)
    audit.emulator.set_faults(**API_FAULTS)
    run = audit.run(DAY)
    assert run.state == "success"
    check_invariants(audit)
    tokens = audit.emulator.server._server.config.app.state.emulator.tokens
    assert tokens, "the DAG logged in, so there is an access token to look for"
    wanted = {*SECRETS_USED, *tokens, audit.secret, audit.emulator.api_key}

    home = Path(os.environ["AIRFLOW_HOME"])
    reports = Path(os.environ["IMAGE_AUDIT_REPORTS_DIR"])
    captured = capfd.readouterr()
    places: dict[str, bytes] = {
        "test output": (captured.out + captured.err + caplog.text).encode(),
        "airflow xcom and rendered fields": _airflow_tables_text(home).encode(),
        "warehouse": _warehouse_text(audit.engine).encode(),
    }
    log_files, report_files = _files(home / "logs"), _files(reports)
    places |= {f"log {p}": p.read_bytes() for p in log_files}
    places |= {f"report {p}": p.read_bytes() for p in report_files}
    assert report_files, "the session wrote reports to scan"
    assert "Report summary" in captured.out + captured.err + caplog.text, "the task logs were captured"

    hits = sorted(
        f"{where}: {secret[:4]}..."
        for where, data in places.items()
        for secret in wanted
        if secret.encode() in data
    )
    FIGURES["secret_hits"] += len(hits)
    FIGURES["places_scanned"] += len(places)
    FIGURES["secrets_looked_for"] += len(wanted)
    assert hits == []
