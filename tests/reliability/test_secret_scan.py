"""No secret anywhere a user or analyst can read: task logs, XCom, the warehouse, report files.

Self-contained: a deployment of its own whose secrets are random (the account's API key, the webhook
secret, and a wrong API key as a user might mistype it), and two DAG runs through every path a secret
could leak from: a run failing on the refused key (its error message), then a run that logs in (an access
token), submits under injected 429s and 5xx, takes results and error webhooks (their messages) and
writes the report. Then each secret, and every access token the emulator issued, is looked for in what
those runs left: the test's output (``dag.test`` logs every task there), their task log files (when
Airflow writes any), their XCom and rendered fields in the Airflow metadata database, every text column
of the warehouse, and their report files.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from sqlalchemy import MetaData, select

from image_audit.warehouse.schema import audit_reports
from tests.support.factories import DAY
from tests.support.reliability import API_FAULTS, FIGURES, check_invariants, reconnect

pytestmark = pytest.mark.slow


def _files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file()] if root.is_dir() else []


def _task_log_files(run_ids: list[str]) -> list[Path]:
    """The task log files of the runs (Airflow's layout names each run's folder ``run_id=<run id>``)."""
    logs = Path(os.environ["AIRFLOW_HOME"]) / "logs"
    return [p for p in _files(logs) if any(f"run_id={run_id}" in p.as_posix() for run_id in run_ids)]


def _airflow_tables_text(run_ids: list[str]) -> str:
    """The runs' XCom values and rendered template fields, as stored in the Airflow metadata database."""
    from airflow.models.renderedtifields import RenderedTaskInstanceFields
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        values = session.scalars(select(XComModel.value).where(XComModel.run_id.in_(run_ids))).all()
        rendered = session.scalars(
            select(RenderedTaskInstanceFields.rendered_fields).where(
                RenderedTaskInstanceFields.run_id.in_(run_ids)
            )
        ).all()
    return "\n".join(str(v) for v in [*values, *rendered])


def _warehouse_text(engine) -> str:
    metadata = MetaData()
    metadata.reflect(engine)
    chunks = []
    with engine.connect() as conn:
        for table in metadata.sorted_tables:
            for row in conn.execute(select(table)):
                chunks.extend(str(v) for v in row if v is not None)
    return "\n".join(chunks)


def _report_files(engine) -> list[Path]:
    """Every file of every report in the warehouse (the test's own: only its runs wrote there)."""
    with engine.connect() as conn:
        paths = conn.execute(select(audit_reports.c.html_path)).scalars().all()
    folders = {Path(urlsplit(path).path).parent for path in paths if path}
    return [file for folder in sorted(folders) for file in _files(folder)]


def test_no_secret_in_logs_xcom_warehouse_or_reports(audit, monkeypatch, capfd, caplog):
    audit.seed(20)  # with the sample catalog's bad rows: rejections, and images Copyleaks fails
    emulator = audit.emulator

    mistyped = secrets.token_urlsafe(24)
    reconnect(monkeypatch, password=mistyped)
    refused = audit.run(DAY)
    assert refused.state == "failed", "the run on a refused API key fails"
    assert emulator.state()["logins_refused"] >= 1

    reconnect(monkeypatch, password=emulator.api_key)
    emulator.set_faults(**API_FAULTS)
    run = audit.run(DAY)  # the day the refused run could not plan (it stopped at the balance's read)
    assert run.state == "success"
    check_invariants(audit)
    state = emulator.state()
    # the emulator's dice are seeded: the same faults every run
    assert state["injected_429"] + state["injected_5xx"] > 0, "submissions went through the API faults"
    failed = [s for s in audit.scans() if s["state"] == "failed"]
    assert failed and all(s["last_error"] for s in failed), "error webhooks with their messages"
    tokens = emulator.server._server.config.app.state.emulator.tokens
    assert tokens, "the DAG logged in, so there is an access token to look for"
    wanted = {*tokens, audit.secret, emulator.api_key, mistyped}

    run_ids = [refused.run_id, run.run_id]
    captured = capfd.readouterr()
    output = captured.out + captured.err + caplog.text
    places: dict[str, bytes] = {
        "test output": output.encode(),
        "airflow xcom and rendered fields": _airflow_tables_text(run_ids).encode(),
        "warehouse": _warehouse_text(audit.engine).encode(),
    }
    report_files = _report_files(audit.engine)
    places |= {f"log {p}": p.read_bytes() for p in _task_log_files(run_ids)}
    places |= {f"report {p}": p.read_bytes() for p in report_files}
    assert any(p.name == "report.html" for p in report_files), "the runs wrote reports to scan"
    assert "Report summary" in output, "the task logs were captured"
    assert "Copyleaks refused the credentials (401)" in output, "the refused run's error was captured"

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
