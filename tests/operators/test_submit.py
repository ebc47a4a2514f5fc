"""``SubmitAuditBatchOperator`` on its own: templates, a scan Copyleaks already holds, fetch headers.

Each test plans a batch in a real warehouse and runs the operator against the emulator, as the submit
task of a run would (``execute`` in this process).
"""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from sqlalchemy import update

from copyleaks_provider.scan_ids import DEFAULT_MODEL
from image_audit.operators.submit import SubmitAuditBatchOperator
from image_audit.planning import PlanOptions, RunContext, plan_run
from image_audit.planning.catalog import CatalogSpec
from image_audit.warehouse.schema import audit_scans
from image_audit_dev.sample_catalog import seed_catalog
from tests.support.factories import DAY


def _plan(audit, run_id: str, **options) -> str:
    [batch_id] = plan_run(
        audit.engine,
        CatalogSpec(),
        RunContext("image_catalog_audit", run_id, DAY, DAY + timedelta(days=1)),
        PlanOptions(model=DEFAULT_MODEL, **options),
    ).batch_ids
    return batch_id


def _submit(batch_id: str) -> dict[str, int]:
    return SubmitAuditBatchOperator(task_id="submit_batch", batch_id=batch_id).execute({})


def test_template_fields_render_from_the_run():
    from airflow.sdk import DAG

    with DAG("templated", schedule=None):
        operator = SubmitAuditBatchOperator(
            task_id="submit",
            batch_id="{{ params.batch }}",
            model="{{ params.model }}",
            mask_type="{{ params.mask }}",
            developer_payload="run {{ params.batch }}",
            webhook_base_url="{{ params.base }}",
        )
    assert set(operator.template_fields) == {
        "batch_id",
        "model",
        "mask_type",
        "sandbox",
        "developer_payload",
        "webhook_base_url",
    }
    params = {"batch": "b-7", "model": "ai-image-1-ultra", "mask": "heatmap", "base": "https://x.example"}
    operator.render_template_fields({"params": params})
    assert (operator.batch_id, operator.model, operator.mask_type) == ("b-7", "ai-image-1-ultra", "heatmap")
    assert (operator.developer_payload, operator.webhook_base_url) == ("run b-7", "https://x.example")


@pytest.mark.parametrize("answer", [201, 409], ids=["idempotent-201", "conflict-409"])
def test_a_scan_copyleaks_already_holds_counts_as_submitted_and_is_charged_once(audit, answer):
    """A try that crashed after Copyleaks accepted its scans but before recording it: the retry sends
    the same scan ids again. Copyleaks does not document its answer; both are taken as submitted."""
    audit.seed(4, bad_rows=False)
    batch_id = _plan(audit, f"resubmit-{answer}")
    assert _submit(batch_id)["submitted"] == 4
    audit.emulator.wait_idle()
    credits = audit.emulator.state()["credits_remaining"]

    with audit.engine.begin() as conn:  # the lost record: the scans look unsent again
        conn.execute(update(audit_scans).where(audit_scans.c.batch_id == batch_id).values(state="pending"))
    audit.emulator.settings.repeat_submission_status = answer
    try:
        counts = _submit(batch_id)
    finally:
        audit.emulator.settings.repeat_submission_status = 201
    assert counts == {"submitted": 4, "rejected": 0, "pending": 0}
    state = audit.emulator.wait_idle()
    assert state["duplicate_submissions"] == 4 and state["credits_remaining"] == credits
    assert {s["state"] for s in audit.scans()} == {"submitted"}


def test_fetch_headers_of_a_catalog_row_reach_copyleaks_fetch(audit, webhook_recorder, monkeypatch):
    """A private image: its row names a connection whose headers Copyleaks must send when it fetches."""
    headers = {"Authorization": "Bearer bucket-token"}
    monkeypatch.setenv(
        "AIRFLOW_CONN_BUCKET_CREDS", json.dumps({"conn_type": "generic", "extra": {"headers": headers}})
    )
    rows = [
        {
            "image_id": image_id,
            "url": webhook_recorder.image_url("private", name),
            "file_name": name,
            "source": "bucket",
            "ingested_at": DAY + timedelta(hours=1),
            "fetch_headers_ref": ref,
        }
        for image_id, name, ref in (
            ("with-credentials", "img-00003.jpg", "bucket_creds"),
            ("without", "img-00004.jpg", None),
        )
    ]
    seed_catalog(audit.engine, rows)
    batch_id = _plan(audit, "private-images")
    assert _submit(batch_id)["submitted"] == 2
    audit.emulator.wait_idle()
    fetched = [h.get("authorization") for h in webhook_recorder.fetch_headers]
    assert sorted(fetched, key=str) == sorted(["Bearer bucket-token", None], key=str)
    states = {s["image_id"]: s["state"] for s in audit.scans()}
    assert states == {"with-credentials": "completed", "without": "failed"}
