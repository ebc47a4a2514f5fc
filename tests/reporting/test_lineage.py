"""Lineage: the real DAG's run emits OpenLineage events through Airflow's OpenLineage provider.

The run is ``dag.test()`` in a child process with the provider's file transport configured, so its
listener plugin is loaded the way a worker loads it (the plugin decides at import time whether it is
enabled, and Airflow caches its plugins and hook lineage collector per process: this process's are
left as the other tests expect them). The assertions read the events the provider wrote.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import timedelta

import pytest

from tests.support import ROOT
from tests.support.factories import DAY

pytestmark = pytest.mark.slow

_RUN_DAG = """
import sys
from datetime import datetime

from airflow.dag_processing.dagbag import DagBag

run = DagBag().get_dag("image_catalog_audit").test(logical_date=datetime.fromisoformat(sys.argv[1]))
print("RUN", run.run_id, run.state)
"""


def _run_with_openlineage(tmp_path, logical_date) -> tuple[str, list[dict]]:
    """One DAG run with the provider's file transport; its run id and the events it emitted."""
    events_file = tmp_path / "openlineage.jsonl"
    env = {
        **os.environ,
        "AIRFLOW__OPENLINEAGE__DISABLED": "False",
        "AIRFLOW__OPENLINEAGE__NAMESPACE": "image-audit-test",
        "AIRFLOW__OPENLINEAGE__TRANSPORT": json.dumps(
            {"type": "file", "log_file_path": str(events_file), "append": True}
        ),
        # emit from a thread of the task process rather than a fork of it (the provider's option)
        "AIRFLOW__OPENLINEAGE__EXECUTE_IN_THREAD": "True",
        "PYTHONPATH": os.pathsep.join(
            filter(None, [str(ROOT), str(ROOT / "dev"), os.environ.get("PYTHONPATH")])
        ),
    }
    done = subprocess.run(
        [sys.executable, "-c", _RUN_DAG, logical_date.isoformat()],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("RUN ")]
    assert done.returncode == 0 and lines, done.stdout[-4000:] + done.stderr[-4000:]
    _, run_id, state = lines[-1].split()
    assert state == "success", done.stderr[-4000:]
    events = [json.loads(line) for line in events_file.read_text().splitlines() if line.strip()]
    return run_id, events


def _task_events(events: list[dict], task_id: str, event_type: str) -> list[dict]:
    return [
        e
        for e in events
        if e.get("eventType") == event_type and e["job"]["name"] == f"image_catalog_audit.{task_id}"
    ]


def _datasets(event: dict, side: str) -> set[tuple[str, str]]:
    return {(d["namespace"], d["name"]) for d in event.get(side, [])}


def test_the_submit_and_report_tasks_emit_their_datasets(audit, tmp_path):
    from sqlalchemy.engine import make_url

    from image_audit.reporting.lineage import warehouse_namespace

    audit.seed(8, bad_rows=False)
    run_id, events = _run_with_openlineage(tmp_path, DAY + timedelta(days=1))
    assert events, "the provider emitted no event"
    assert all(e["job"]["namespace"] == "image-audit-test" for e in events)

    url = make_url(str(audit.engine.url))
    namespace = warehouse_namespace(str(url))
    assert "@" not in namespace and "***" not in namespace  # never a credential
    if url.get_backend_name() == "postgresql":
        assert namespace == f"postgres://{url.host}:{url.port or 5432}"
        qualified = f"{url.database}.public."
    else:
        assert namespace == f"sqlite://{url.database}"
        qualified = ""

    (submit,) = _task_events(events, "submit_batch", "COMPLETE")  # 8 images: one batch
    assert submit["run"]["facets"]["airflow"]["taskInstance"]["map_index"] == 0
    assert _datasets(submit, "inputs") == {(namespace, f"{qualified}image_catalog")}
    assert _datasets(submit, "outputs") == {
        (namespace, f"{qualified}audit_scans"),
        (namespace, f"{qualified}audit_results"),
    }

    (report,) = _task_events(events, "report", "COMPLETE")
    row = audit.report(run_id)
    files = [row[key] for key in ("html_path", "csv_path", "parquet_path")]
    assert all(f.startswith("file:///") for f in files)
    # the common.io provider's convention for file:// URIs: namespace "file", name the absolute path
    assert _datasets(report, "outputs") == {("file", f.removeprefix("file://")) for f in files}


def test_table_datasets_follow_the_openlineage_naming_and_carry_no_credential():
    from image_audit.planning.catalog import CatalogSpec
    from image_audit.reporting.lineage import submit_datasets

    url = "postgresql+psycopg2://audit:s3cret@db.internal/warehouse?sslmode=require"
    inputs, outputs = submit_datasets(url, CatalogSpec(table="photos", schema="media"))
    (catalog,) = inputs
    assert (catalog.namespace, catalog.name) == ("postgres://db.internal:5432", "warehouse.media.photos")
    assert [d.name for d in outputs] == ["warehouse.public.audit_scans", "warehouse.public.audit_results"]
    assert not any("s3cret" in d.namespace or "audit@" in d.namespace for d in inputs + outputs)
