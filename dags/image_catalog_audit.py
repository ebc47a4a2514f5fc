"""image_catalog_audit: the nightly Copyleaks audit of newly ingested catalog images.

plan -> submit_batch (mapped over warehouse batches) -> wait_for_results (deferrable) -> report

- ``plan`` reads the catalog rows ingested in the run's data interval (so backfills just work), plus
  scans earlier runs left unfinished (those first), records every decision in the warehouse and returns
  batch ids. It plans no more than fits the run's submission window at the account's request rate
  (``max_submit_minutes``) and its credit budget (``max_credits``); the rest waits for the next run.
- ``submit_batch`` submits one batch through the Copyleaks hook's async client.
- ``wait_for_results`` defers to the triggerer until the webhook receiver has stored every result (or
  its timeout: the missing scans become ``timed_out`` and the next run retries them).
- ``report`` aggregates the run for analysts (HTML, CSV, Parquet, warehouse row) and emits an Asset.
  Its files are its OpenLineage outputs (``image_audit.reporting.lineage``); ``submit_batch``'s are the
  warehouse's.
  It is a teardown: it runs even when a submit fails, and the run's state still shows that failure.
  Its success callback sends an alert when the run's figures cross the ``alert_*`` Params' thresholds.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from airflow.sdk import DAG, Asset, CronDataIntervalTimetable, Param, Variable, get_current_context, task

from copyleaks_provider.scan_ids import MODEL_ALIASES
from copyleaks_provider.settings import DEFAULT_CONN_ID
from image_audit.config import DEFAULT_WAREHOUSE_CONN_ID, warehouse_url
from image_audit.notifications.alerts import AuditAlertNotifier
from image_audit.operators.submit import SubmitAuditBatchOperator
from image_audit.operators.wait import WaitForScanResultsOperator
from image_audit.ui.links import AuditReportLink

log = logging.getLogger(__name__)

DAG_ID = "image_catalog_audit"
#: The Copyleaks connection: credentials, webhook, and the account's request rate the window is cut to.
COPYLEAKS_CONN_ID = DEFAULT_CONN_ID
#: The warehouse connection (catalog, scans, results, reports); without it, the embedded SQLite file.
WAREHOUSE_CONN_ID = DEFAULT_WAREHOUSE_CONN_ID
#: Downstream analytics DAGs schedule on this; its events carry the report files' URIs (html_path,
#: csv_path, parquet_path: file:///... or s3://..., per IMAGE_AUDIT_REPORTS_URL).
AUDIT_REPORT_ASSET = Asset(name="image_audit_report", uri="image-audit://reports/image_catalog_audit")

with DAG(
    dag_id=DAG_ID,
    description="Audit newly ingested catalog images for AI-generated content with Copyleaks",
    schedule=CronDataIntervalTimetable("0 0 * * *", timezone="UTC"),
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=4,
    render_template_as_native_obj=True,
    default_args={"retries": 2, "retry_delay": timedelta(seconds=30)},
    tags=["copyleaks", "image-audit"],
    doc_md=__doc__,
    params={
        "source_filter": Param(None, type=["null", "string"], description="Only catalog rows of this source"),
        "limit": Param(None, type=["null", "integer"], minimum=1, description="At most this many rows"),
        "sandbox": Param(
            None, type=["null", "boolean"], description="Mock results, no credits (null: the connection's)"
        ),
        "force_rescan": Param(False, type="boolean", description="Rescan images already scanned"),
        "batch_size": Param(1000, type="integer", minimum=1, maximum=100_000, description="Images per batch"),
        "max_credits": Param(
            None, type=["null", "integer"], minimum=0, description="Budget guard: stop planning past this"
        ),
        "model": Param("ai-image-1-ultra", enum=sorted({*MODEL_ALIASES, *MODEL_ALIASES.values()})),
        "mask_type": Param(None, type=["null", "string"], enum=[None, "heatmap"]),
        "max_attempts": Param(3, type="integer", minimum=1, description="Tries per image across runs"),
        "wait_timeout_minutes": Param(360, type="number", minimum=0, description="How long to wait"),
        "max_submit_minutes": Param(
            360,
            type=["null", "number"],
            minimum=0,
            description="Submission window: plan only what the account's request rate submits in this "
            "many minutes; the rest waits for the next run (null: no window)",
        ),
        # Alerts (image_audit.notifications.alerts): the report task e-mails alert_to when a figure is over
        # its threshold; null: that check is off.
        "alert_ai_share": Param(
            None, type=["null", "number"], minimum=0, maximum=1, description="Alert: AI-generated share over"
        ),
        "alert_ai_count": Param(
            None, type=["null", "integer"], minimum=0, description="Alert: more AI-generated images than"
        ),
        "alert_failed_share": Param(
            None,
            type=["null", "number"],
            minimum=0,
            maximum=1,
            description="Alert: failed+timed-out share over",
        ),
        "alert_credits": Param(
            None, type=["null", "number"], minimum=0, description="Alert: credits spent over"
        ),
        "alert_to": Param(
            None,
            type=["null", "string", "array"],
            items={"type": "string"},
            description="Alert e-mail recipients (a comma-separated string or a list; null: no e-mail)",
        ),
    },
) as dag:

    @task
    def plan() -> list[str]:
        """Record this run's scans and rejections in the warehouse; return the batch ids to submit."""
        from image_audit.planning import PlanOptions, RunContext, plan_run
        from image_audit.planning.catalog import CatalogSpec
        from image_audit.planning.window import submission_capacity
        from image_audit.warehouse.engine import get_engine
        from image_audit.warehouse.migrations import require_current

        context = get_current_context()
        params = context["params"]
        engine = get_engine(warehouse_url(WAREHOUSE_CONN_ID))
        require_current(engine, create_empty=True)  # a warehouse behind: fail with the command to run
        start, end = _data_interval(context)
        spec = CatalogSpec.from_dict(Variable.get("image_audit_catalog", default=None, deserialize_json=True))
        copyleaks = _copyleaks_settings()  # read once: it may come from a secrets backend
        minutes = params["max_submit_minutes"]
        rate = copyleaks.requests_per_second if minutes is not None else None
        max_submissions = submission_capacity(rate, minutes)
        if max_submissions is not None:
            log.info(
                "Submission window: %s minutes at %s requests/s: at most %d submissions",
                minutes,
                rate,
                max_submissions,
            )
        elif minutes is not None:
            log.info("The Copyleaks account has no request limit: no submission window")
        result = plan_run(
            engine,
            spec,
            RunContext(context["dag"].dag_id, context["run_id"], start, end),
            PlanOptions(
                model=params["model"],
                # What the run really sends, which the report's credits count on: the Param, else the
                # connection's default (the submit task sends each scan's recorded value).
                sandbox=copyleaks.sandbox if params["sandbox"] is None else bool(params["sandbox"]),
                force_rescan=params["force_rescan"],
                batch_size=params["batch_size"],
                max_credits=params["max_credits"],
                max_submissions=max_submissions,
                max_attempts=params["max_attempts"],
                source_filter=params["source_filter"],
                limit=params["limit"],
            ),
        )
        log.info("Interval [%s, %s): %s", start, end, result.as_dict())
        return result.batch_ids

    # A report reads the warehouse and fetches a few catalog images (attacker-chosen hosts) under its
    # own deadlines: minutes at most. Past 30, something hangs: fail (and retry) rather than hold a slot.
    @task(
        outlets=[AUDIT_REPORT_ASSET],
        on_success_callback=AuditAlertNotifier(),
        execution_timeout=timedelta(minutes=30),
    )
    def report() -> dict:
        """Close the run in the warehouse and write the analysts' report."""
        from image_audit.reporting import build_run_report
        from image_audit.reporting.lineage import record_report_outputs
        from image_audit.warehouse.engine import get_engine
        from image_audit.warehouse.progress import mark_timed_out, release_unsubmitted

        context = get_current_context()
        dag_id, run_id = context["dag"].dag_id, context["run_id"]
        engine = get_engine(warehouse_url(WAREHOUSE_CONN_ID))
        released = release_unsubmitted(engine, dag_id, run_id)
        stranded = mark_timed_out(engine, dag_id, run_id, "the run ended before its result arrived")
        if released or stranded:
            log.warning(
                "%d scans were never submitted (the next run submits them); %d timed out", released, stranded
            )
        try:
            rate = _copyleaks_settings().requests_per_second
        except Exception as exc:  # the report never fails for want of an estimate
            log.warning("No request rate for the backlog estimate: %s", type(exc).__name__)
            rate = None
        run_report = build_run_report(
            engine,
            dag_id,
            run_id,
            data_interval=_data_interval(context),
            requests_per_second=rate,
            window_minutes=context["params"]["max_submit_minutes"],
        )
        if run_report.summary["backlog_scans"]:
            log.info("Backlog: %s", run_report.summary["backlog"])
        log.info("Report summary: %s", run_report.summary)
        # URIs (file:///..., s3://bucket/...), under the keys the audit_reports row's columns have
        uris = run_report.uris
        log.info("Report: %s (CSV %s, Parquet %s)", uris["html_path"], uris["csv_path"], uris["parquet_path"])
        context["outlet_events"][AUDIT_REPORT_ASSET].extra = {"dag_id": dag_id, "run_id": run_id, **uris}
        # The files are the task's OpenLineage outputs: hook lineage, as TaskFlow has no facets method.
        record_report_outputs([uris["html_path"], uris["csv_path"], uris["parquet_path"]])
        return {"html_path": uris["html_path"], **_small(run_report.summary)}

    batches = plan()
    submitted = SubmitAuditBatchOperator.partial(
        task_id="submit_batch",
        copyleaks_conn_id=COPYLEAKS_CONN_ID,
        warehouse_conn_id=WAREHOUSE_CONN_ID,
        mask_type="{{ params.mask_type }}",
        retries=3,
        retry_delay=timedelta(seconds=20),
        retry_exponential_backoff=True,
    ).expand(batch_id=batches)
    waited = WaitForScanResultsOperator(
        task_id="wait_for_results",
        copyleaks_conn_id=COPYLEAKS_CONN_ID,
        warehouse_conn_id=WAREHOUSE_CONN_ID,
        wait_timeout="{{ params.wait_timeout_minutes * 60 }}",
    )
    reported = report()
    # The "Audit report" button on the report task too (TaskFlow takes no extra links as an argument;
    # the serialized DAG carries the instance's links, and the task pushes its URL when it finishes).
    reported.operator.operator_extra_links = (AuditReportLink(),)
    batches >> submitted >> waited >> reported
    # A teardown that counts for the run state would be its only leaf, hiding a failed submit or wait:
    # left out, the run fails whenever submit_batch or wait_for_results does.
    reported.as_teardown(setups=batches)


def _data_interval(context) -> tuple[datetime, datetime]:
    """The run's data interval; a manual run without one audits the 24 hours before it was triggered."""
    start, end = context.get("data_interval_start"), context.get("data_interval_end")
    if start is None or end is None or start == end:
        end = context["dag_run"].run_after
        start = end - timedelta(days=1)
    return start, end


def _copyleaks_settings():
    """The Copyleaks connection's settings (read in a task: parsing the DAG reads no connection)."""
    from airflow.sdk import BaseHook

    from copyleaks_provider.settings import CopyleaksSettings

    return CopyleaksSettings.from_connection(BaseHook.get_connection(COPYLEAKS_CONN_ID))


def _small(summary: dict) -> dict:
    """The scalar totals of a report summary: what belongs in XCom."""
    return {k: v for k, v in summary.items() if isinstance(v, int | float | str | bool) or v is None}
