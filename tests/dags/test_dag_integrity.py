"""Every DAG file imports cleanly, and the audit DAG has its five tasks, Params and report asset."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support import ROOT

DAGS = ROOT / "dags"


@pytest.fixture(scope="module")
def dagbag():
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(DAGS))


def test_every_dag_file_imports_without_errors(dagbag):
    assert dagbag.import_errors == {}
    files = {Path(f).name for f in DAGS.glob("*.py")}
    assert files and {Path(d.fileloc).name for d in dagbag.dags.values()} == files


def test_audit_dag_shape(dagbag):
    dag = dagbag.dags["image_catalog_audit"]
    tasks = {"plan", "submit_batch", "wait_for_results", "close_run", "report", "archive_results"}
    assert {t.task_id for t in dag.tasks} == tasks
    assert dag.get_task("wait_for_results").upstream_task_ids == {"submit_batch"}
    close_run, report = dag.get_task("close_run"), dag.get_task("report")
    assert close_run.is_teardown and close_run.upstream_task_ids >= {"plan", "wait_for_results"}
    assert report.is_teardown and report.upstream_task_ids >= {"plan", "close_run"}
    archive = dag.get_task("archive_results")
    assert archive.is_teardown and archive.upstream_task_ids >= {"plan", "report"}
    assert [o.name for o in report.outlets] == ["image_audit_report"]
    assert set(dag.params) >= {
        "source_filter",
        "limit",
        "sandbox",
        "force_rescan",
        "batch_size",
        "max_credits",
    }
    assert not dag.catchup
