"""Run the submit operator for one warehouse batch in its own process, so a test can SIGKILL it mid-batch.

``python -m tests.support.submit_batch_process BATCH_ID``; the warehouse and the Copyleaks
connection come from the environment (AIRFLOW_CONN_IMAGE_AUDIT_WAREHOUSE, AIRFLOW_CONN_COPYLEAKS_DEFAULT).
"""

from __future__ import annotations

import sys


def submit_batch(batch_id: str) -> dict[str, int]:
    from image_audit.operators.submit import SubmitAuditBatchOperator

    return SubmitAuditBatchOperator(task_id="submit_batch", batch_id=batch_id).execute({})


if __name__ == "__main__":
    print(submit_batch(sys.argv[1]), flush=True)
