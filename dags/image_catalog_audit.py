"""image_catalog_audit: the Copyleaks audit of newly ingested catalog images, run when the catalog's
Asset is updated and nightly at the latest.

plan -> submit_batch (mapped over warehouse batches) -> wait_for_results (deferrable) -> close_run
-> report -> archive_results

- ``plan`` reads the catalog rows ingested in the run's interval (since the catalog's watermark; a
  backfill's day), plus scans earlier runs left unfinished (those first), records every decision in
  the warehouse and returns batch ids. It plans no more than fits the run's submission window at the
  account's request rate (``max_submit_minutes``) and its credit budget (``max_credits``); the rest
  waits for the next run.
- ``submit_batch`` submits one batch through the Copyleaks hook's async client.
- ``wait_for_results`` defers to the triggerer until the webhook receiver has stored every result (or
  its timeout: the missing scans become ``timed_out`` and the next run retries them).
- ``close_run`` closes the run's scans in the warehouse (never submitted: back to the queue; still
  waiting: timed out) and brings the analytics model (docs/analytics.md) up to date. Its success
  callback alerts when a source's share jumped above its baseline (the ``alert_change_*`` Params).
- ``report`` aggregates the run for analysts (HTML, CSV, Parquet, warehouse row) and emits an Asset.
  Its files are its OpenLineage outputs (``image_audit.reporting.lineage``); ``submit_batch``'s are the
  warehouse's.
  Its success callback sends an alert when the run's figures cross the ``alert_*`` Params' thresholds.
- ``archive_results`` moves the results of images settled more than ``archive_after_days`` ago to
  Parquet in the reports store (``image_audit.maintenance.archive``); the analytics model keeps them.
- ``close_run``, ``report`` and ``archive_results`` are teardowns: they run even when a submit fails,
  and the run's state still shows that failure.

A run still unfinished at its deadline (if one is configured) sends one alert with where it is.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from airflow.sdk import DAG, Asset, Param, Variable, get_current_context, task
from airflow.sdk.exceptions import AirflowFailException

from copyleaks_provider.exceptions import CopyleaksAuthError, CopyleaksCreditsError, account_error_text
from copyleaks_provider.scan_ids import MODEL_ALIASES
from copyleaks_provider.settings import DEFAULT_CONN_ID
from image_audit.config import DEFAULT_WAREHOUSE_CONN_ID, warehouse_url
from image_audit.notifications.alerts import AuditAlertNotifier
from image_audit.notifications.changes import SourceChangeNotifier
from image_audit.notifications.deadline import audit_deadlines
from image_audit.operators.submit import SubmitAuditBatchOperator
from image_audit.operators.wait import WaitForScanResultsOperator
from image_audit.planning.schedule import AuditInterval, audit_interval, audit_schedule
from image_audit.ui.links import AuditReportLink

log = logging.getLogger(__name__)

DAG_ID = "image_catalog_audit"
#: The Copyleaks connection: credentials, webhook, and the account's request rate the window is cut to.
COPYLEAKS_CONN_ID = DEFAULT_CONN_ID
#: The warehouse connection (catalog, scans, results, reports); without it, the embedded SQLite file.
WAREHOUSE_CONN_ID = DEFAULT_WAREHOUSE_CONN_ID
#: Downstream analytics DAGs schedule on this; its events carry the report files' URIs (html_path,
#: csv_path, parquet_path: file:///... or s3://..., per IMAGE_AUDIT_REPORTS_URL).
#: The XCom (of ``plan``) holding the account's credit balance when the run was planned.
CREDITS_BEFORE_XCOM = "credits_before"
AUDIT_REPORT_ASSET = Asset(name="image_audit_report", uri="image-audit://reports/image_catalog_audit")

with DAG(
    dag_id=DAG_ID,
    description="Audit newly ingested catalog images for AI-generated content with Copyleaks",
    # When the catalog's Asset (IMAGE_AUDIT_CATALOG_ASSET) is updated, and at 00:00 UTC at the latest; a
    # run audits the rows since the catalog's watermark, a backfill its day (image_audit.planning.schedule).
    schedule=audit_schedule(),
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=4,
    render_template_as_native_obj=True,
    default_args={"retries": 2, "retry_delay": timedelta(seconds=30)},
    tags=["copyleaks", "image-audit"],
    doc_md=__doc__,
    # "Finished by": IMAGE_AUDIT_FINISH_BY and IMAGE_AUDIT_MAX_RUN_HOURS; the scheduler checks it and a
    # worker sends the alert (image_audit.notifications.deadline). Unset: no deadline.
    deadline=audit_deadlines(warehouse_conn_id=WAREHOUSE_CONN_ID, copyleaks_conn_id=COPYLEAKS_CONN_ID),
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
        "credit_reserve": Param(
            0,
            type="integer",
            minimum=0,
            description="Credits of the account's balance a run leaves unspent (it plans at most the rest)",
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
        # Change alerts (image_audit.notifications.changes): close_run e-mails alert_to when a source's
        # share of a day is this many points over its baseline; null: off.
        "alert_change_points": Param(
            10,
            type=["null", "number"],
            minimum=0,
            maximum=100,
            description="Alert: a source's AI or failure share this many points over its baseline",
        ),
        "alert_change_min_images": Param(
            100,
            type="integer",
            minimum=1,
            description="Change alerts: a source's day counts with at least this many images",
        ),
        "alert_change_baseline_days": Param(
            14,
            type="integer",
            minimum=3,
            maximum=366,
            description="Change alerts: the baseline is the median of the source's previous N days",
        ),
        "alert_to": Param(
            None,
            type=["null", "string", "array"],
            items={"type": "string"},
            description="Alert e-mail recipients (a comma-separated string or a list; null: no e-mail)",
        ),
        # Retention (image_audit.maintenance.archive): archive_results moves the results of images settled
        # this many days ago to Parquet in the reports store; the analytics model keeps them. null: off.
        "archive_after_days": Param(
            400,
            type=["null", "integer"],
            minimum=1,
            description="Archive results settled this many days ago to the reports store (null: keep all)",
        ),
    },
) as dag:

    @task
    def plan() -> list[str]:
        """Record this run's scans and rejections in the warehouse; return the batch ids to submit."""
        from image_audit.planning import PlanOptions, RunContext, plan_run
        from image_audit.planning.catalog import (
            CATALOG_VARIABLE,
            CatalogMappingError,
            CatalogSpec,
            checked_spec,
        )
        from image_audit.planning.credits import NotEnoughCredits, credits_for_run
        from image_audit.planning.window import submission_capacity
        from image_audit.warehouse.engine import get_engine
        from image_audit.warehouse.migrations import require_current

        context = get_current_context()
        params = context["params"]
        engine = get_engine(warehouse_url(WAREHOUSE_CONN_ID))
        require_current(engine, create_empty=True)  # a warehouse behind: fail with the command to run
        interval = _audit_interval(context)
        copyleaks = _copyleaks_settings()  # read once: it may come from a secrets backend
        # What the run really sends, which the report's credits count on: the Param, else the
        # connection's default (the submit task sends each scan's recorded value).
        sandbox = copyleaks.sandbox if params["sandbox"] is None else bool(params["sandbox"])
        try:  # a configuration the run cannot work with fails once, saying what to change: no retries
            spec = checked_spec(engine, CatalogSpec.from_json(Variable.get(CATALOG_VARIABLE, default=None)))
            credits = None if sandbox else credits_for_run(_account_credits(), params["credit_reserve"])
        except (CatalogMappingError, NotEnoughCredits) as exc:
            raise AirflowFailException(str(exc)) from exc
        except (CopyleaksAuthError, CopyleaksCreditsError) as exc:  # not a login block: that is retried
            what, advice = account_error_text(exc)
            raise AirflowFailException(
                f"{what} when the account's balance was read: nothing was planned or submitted. {advice}"
            ) from exc
        if credits is not None:
            context["ti"].xcom_push(key=CREDITS_BEFORE_XCOM, value=credits.balance)
            log.info("The account has %d credits; this run may spend %d", credits.balance, credits.available)
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
            RunContext(context["dag"].dag_id, context["run_id"], interval.start, interval.end),
            PlanOptions(
                model=params["model"],
                sandbox=sandbox,
                force_rescan=params["force_rescan"],
                batch_size=params["batch_size"],
                max_credits=params["max_credits"],
                credit_balance=None if credits is None else credits.available,
                max_submissions=max_submissions,
                max_attempts=params["max_attempts"],
                source_filter=params["source_filter"],
                limit=params["limit"],
                follow_watermark=interval.follows_watermark,
            ),
        )
        log.info("Interval [%s, %s): %s", *_data_interval(context), result.as_dict())
        return result.batch_ids

    @task(
        retries=2,
        retry_delay=timedelta(seconds=30),
        execution_timeout=timedelta(minutes=30),
        on_success_callback=SourceChangeNotifier(),
    )
    def close_run() -> dict:
        """Close the run's scans, recompute the analytics model where scans changed, and find the sources
        whose figures jumped (its callback alerts on them)."""
        from image_audit.notifications.changes import run_changes
        from image_audit.warehouse.analytics import refresh_changed
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
        with engine.begin() as conn:  # the changes are read from the model as this transaction leaves it
            images, days = refresh_changed(conn)
            changes = run_changes(conn, dag_id, run_id, context["params"])
        log.info("Analytics model: %d images and %d daily rows recomputed", images, days)
        return {
            "released": released,
            "timed_out": stranded,
            "images": images,
            "days": days,
            "changes": changes,
        }

    # A report reads the warehouse and fetches a few catalog images (attacker-chosen hosts) under its
    # own deadlines: minutes at most. Past 30, something hangs: fail (and retry) rather than hold a slot.
    @task(
        outlets=[AUDIT_REPORT_ASSET],
        on_success_callback=AuditAlertNotifier(),
        execution_timeout=timedelta(minutes=30),
    )
    def report() -> dict:
        """Write the analysts' report of the closed run."""
        from image_audit.reporting import build_run_report
        from image_audit.reporting.lineage import record_report_outputs
        from image_audit.warehouse.engine import get_engine

        context = get_current_context()
        dag_id, run_id = context["dag"].dag_id, context["run_id"]
        engine = get_engine(warehouse_url(WAREHOUSE_CONN_ID))
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
            account_balance=_account_balance(context),
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

    @task(execution_timeout=timedelta(hours=2))
    def archive_results() -> dict:
        """Archive the results older than ``archive_after_days`` (Parquet in the reports store), keeping
        the analytics model whole, so the per-scan tables hold the recent history only."""
        from image_audit.maintenance.archive import archive_results as archive
        from image_audit.warehouse.engine import get_engine

        days = get_current_context()["params"]["archive_after_days"]
        if days is None:
            log.info("archive_after_days is null: every result stays in the warehouse")
            return {"archived": None}
        done = archive(get_engine(warehouse_url(WAREHOUSE_CONN_ID)), timedelta(days=days))
        log.info("Archived results settled more than %d days ago: %s", days, done.as_dict())
        return {"archived": done.as_dict()}

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
    closed = close_run()
    reported = report()
    # The "Audit report" button on the report task too (TaskFlow takes no extra links as an argument;
    # the serialized DAG carries the instance's links, and the task pushes its URL when it finishes).
    reported.operator.operator_extra_links = (AuditReportLink(),)
    archived = archive_results()
    batches >> submitted >> waited >> closed >> reported >> archived
    # A teardown that counts for the run state would be its only leaf, hiding a failed submit or wait:
    # left out, the run fails whenever submit_batch or wait_for_results does. The report runs even when
    # close_run failed: its scans are then reported in the state they were left in.
    closed.as_teardown(setups=batches)
    reported.as_teardown(setups=batches)
    archived.as_teardown(setups=batches)


def _audit_interval(context) -> AuditInterval:
    """What the run asks planning for (``image_audit.planning.schedule.audit_interval``): its data interval
    (a backfill, a manual run given a logical date), or the catalog's watermark to its ``run_after``."""
    run = context["dag_run"]
    start, end = context.get("data_interval_start"), context.get("data_interval_end")
    return audit_interval(run.run_type, start, end, run.run_after)


def _data_interval(context) -> tuple[datetime, datetime]:
    """The catalog interval the run audits: its data interval, or the interval its plan claimed from the
    catalog's watermark (the empty interval at its end while it has claimed none)."""
    interval = _audit_interval(context)
    if not interval.follows_watermark:
        return interval.start, interval.end
    from image_audit.planning.watermark import run_interval
    from image_audit.warehouse.engine import get_engine

    engine = get_engine(warehouse_url(WAREHOUSE_CONN_ID))
    return run_interval(engine, context["dag"].dag_id, context["run_id"]) or (interval.end, interval.end)


def _account_credits() -> int:
    """The Copyleaks account's credit balance (one API call, counted against the account's budget)."""
    from copyleaks_provider.hooks.copyleaks import CopyleaksHook

    return CopyleaksHook(COPYLEAKS_CONN_ID).get_credits()


def _account_balance(context):
    """The account's balance when the run was planned and now, with Copyleaks' usage history of those
    days, for the report's reconciliation; None for a run that read no balance (sandbox) or when the
    account cannot be read now (the report never fails for it)."""
    from datetime import UTC

    from copyleaks_provider.account.credits import usage_history_net
    from copyleaks_provider.hooks.copyleaks import CopyleaksHook
    from image_audit.reporting import AccountBalance

    before = context["ti"].xcom_pull(task_ids="plan", key=CREDITS_BEFORE_XCOM)
    if before is None:
        return None
    hook = CopyleaksHook(COPYLEAKS_CONN_ID)
    try:
        after = hook.get_credits()
        planned_on = (context["dag_run"].start_date or datetime.now(UTC)).date()
        usage = usage_history_net(hook.get_usage_history(planned_on, datetime.now(UTC).date()))
    except Exception as exc:
        log.warning("The account's balance could not be read for the report (%s)", type(exc).__name__)
        return None
    return AccountBalance(before=int(before), after=after, usage_history=usage)


def _copyleaks_settings():
    """The Copyleaks connection's settings (read in a task: parsing the DAG reads no connection)."""
    from airflow.sdk import BaseHook

    from copyleaks_provider.settings import CopyleaksSettings

    return CopyleaksSettings.from_connection(BaseHook.get_connection(COPYLEAKS_CONN_ID))


def _small(summary: dict) -> dict:
    """The scalar totals of a report summary: what belongs in XCom."""
    return {k: v for k, v in summary.items() if isinstance(v, int | float | str | bool) or v is None}
