"""``SubmitAuditBatchOperator``: submit one planned batch of the warehouse to Copyleaks.

The batch's rows live in the warehouse (only the batch id travels through XCom). Each outcome is
recorded as it arrives, so a retried task skips what was already accepted and resubmits the rest
with the same deterministic scan ids.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from functools import cached_property
from typing import TYPE_CHECKING, Any

from sqlalchemy.engine import Engine

from copyleaks_provider.operators.submit import CopyleaksSubmitImagesOperator, Submission, SubmissionState
from image_audit.config import DEFAULT_WAREHOUSE_CONN_ID, warehouse_url
from image_audit.planning.catalog import CatalogSpec
from image_audit.ui.links import AuditReportLink
from image_audit.warehouse.engine import get_engine
from image_audit.warehouse.lifecycle import ScanState
from image_audit.warehouse.scans import load_unsent_scans, record_submit_error, record_transitions

if TYPE_CHECKING:
    from airflow.providers.openlineage.extractors import OperatorLineage
    from airflow.sdk import Context

_SCAN_STATES = {SubmissionState.SUBMITTED: ScanState.SUBMITTED, SubmissionState.REJECTED: ScanState.REJECTED}


class SubmitAuditBatchOperator(CopyleaksSubmitImagesOperator):
    """Submit the ``pending`` scans of warehouse batch ``batch_id`` to Copyleaks' async image detector.

    :param batch_id: the batch to submit (from the planning task). Templated.
    :param warehouse_conn_id: the warehouse connection.
    :param model: detection model for every scan; ``None`` sends each scan's planned model.
    :param sandbox: ``None`` sends what planning recorded for each scan (the report's credits count on
        it).

    The other parameters are :class:`~copyleaks_provider.operators.submit.CopyleaksSubmitImagesOperator`'s.
    Returns (XCom) ``{"submitted": n, "rejected": n, "pending": n}``.

    Its "Audit report" extra link opens the run's tab in the Airflow UI (live progress while it runs).

    Lineage (OpenLineage provider): the catalog table in; the ``audit_scans`` and ``audit_results``
    tables out (:mod:`image_audit.reporting.lineage`).
    """

    operator_extra_links = (AuditReportLink(),)
    template_fields: Sequence[str] = (
        "batch_id",
        *(f for f in CopyleaksSubmitImagesOperator.template_fields if f != "images"),
    )

    def __init__(
        self, *, batch_id: str, warehouse_conn_id: str = DEFAULT_WAREHOUSE_CONN_ID, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.batch_id = batch_id
        self.warehouse_conn_id = warehouse_conn_id
        #: The catalog this run planned from, read in ``execute`` for the lineage (the listener reads no
        #: Variable); ``None`` when it could not be read.
        self._lineage_catalog: CatalogSpec | None = None

    @cached_property
    def engine(self) -> Engine:
        return get_engine(warehouse_url(self.warehouse_conn_id))

    def execute(self, context: Context) -> dict[str, int]:
        self._lineage_catalog = self._read_catalog()
        scans = load_unsent_scans(self.engine, self.batch_id)
        if not scans:
            self.log.info("Batch %s: nothing left to submit", self.batch_id)
            return {"submitted": 0, "rejected": 0, "pending": 0}
        self.log.info("Batch %s: submitting %d images", self.batch_id, len(scans))
        images = [{**scan, "headers_conn_id": scan["fetch_headers_ref"]} for scan in scans]
        summary = self.submit_images(images)
        self.log.info("Batch %s done: %s", self.batch_id, summary.counts())
        self.raise_if_pending(summary, f"the {len(scans)} of batch {self.batch_id}")
        return summary.counts()

    def _read_catalog(self) -> CatalogSpec | None:
        from image_audit.reporting.lineage import configured_catalog

        try:
            return configured_catalog()
        except Exception as exc:  # lineage never fails the submission
            self.log.warning("No catalog for the lineage: %s", exc)
            return None

    def get_openlineage_facets_on_complete(self, task_instance) -> OperatorLineage:
        """The OpenLineage provider's hook: the catalog table in, the scans and results tables out."""
        from airflow.providers.openlineage.extractors import OperatorLineage

        from image_audit.reporting.lineage import submit_datasets

        inputs, outputs = submit_datasets(str(self.engine.url), self._lineage_catalog or CatalogSpec())
        # a catalog execute could not read: the outputs alone, rather than a guessed input
        return OperatorLineage(inputs=inputs if self._lineage_catalog else [], outputs=outputs)

    def record(self, submissions: list[Submission]) -> None:
        """Accepted and refused scans change state; a pending one keeps its state and notes why."""
        record_transitions(
            self.engine,
            [(s.scan_id, _SCAN_STATES[s.state], s.reason) for s in submissions if s.state in _SCAN_STATES],
        )
        pending: dict[str, list[str]] = defaultdict(list)
        for submission in submissions:
            if submission.state == SubmissionState.PENDING:
                pending[submission.reason or ""].append(submission.scan_id)
        for reason, scan_ids in pending.items():
            record_submit_error(self.engine, scan_ids, reason)
