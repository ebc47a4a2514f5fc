"""``WaitForScanResultsOperator``: wait, deferred, until the webhook receiver has every result of a run.

A ``BaseOperator``, not a sensor: it never pokes in a worker slot. ``execute`` checks once and returns
at once if nothing waits, else defers to the triggerer; the wait's own deadline is ``wait_timeout``,
after which it goes on with partial results. (A ``BaseSensorOperator`` would promise ``timeout``,
``soft_fail``, ``mode`` and ``poke_interval`` semantics this wait does not have.)
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from functools import cached_property
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowException

from copyleaks_provider.hooks.copyleaks import CopyleaksHook
from copyleaks_provider.settings import DEFAULT_CONN_ID
from image_audit.config import DEFAULT_WAREHOUSE_CONN_ID, warehouse_url
from image_audit.triggers.scan_results import ScanResultsTrigger
from image_audit.ui.links import AuditReportLink
from image_audit.warehouse.engine import get_engine, is_postgres
from image_audit.warehouse.lifecycle import ScanState
from image_audit.warehouse.progress import count_scan_states_sync, mark_timed_out, waiting

if TYPE_CHECKING:
    from airflow.sdk import Context

DEFAULT_WAIT_TIMEOUT = timedelta(hours=6)
#: Default seconds between warehouse polls: on PostgreSQL the receiver's NOTIFY wakes the wait at once
#: and the poll is only a safety net; elsewhere (SQLite) the poll is how the wait sees results.
POLL_INTERVAL_WITH_NOTIFY = 10.0
POLL_INTERVAL_WITHOUT_NOTIFY = 2.0
#: The deferral's own timeout is the wait's plus this: the trigger ends the wait itself at its deadline
#: (scans timed out, partial results); only when no triggerer runs the trigger does Airflow's deferral
#: timeout fail the task, rather than leave it deferred for ever.
DEFER_GRACE = timedelta(minutes=10)


class WaitForScanResultsOperator(BaseOperator):
    """Wait until no scan of a run awaits its Copyleaks callback; holds no worker slot meanwhile.

    Always deferrable: ``execute`` checks once and returns at once if nothing waits, else hands the
    wait to the triggerer (:class:`~image_audit.triggers.scan_results.ScanResultsTrigger`).

    On ``wait_timeout`` the scans still waiting become ``timed_out`` (the next run resubmits them) and
    the task still succeeds, returning ``partial: True``: the report goes on with what arrived and says
    so. Returns (XCom) ``{"counts": {state: scans}, "timed_out": n, "partial": bool}``.

    :param target_dag_id: the run's DAG (default: this task's DAG). Templated.
    :param target_run_id: the run (default: this task's run). Templated.
    :param wait_timeout: how long to wait for callbacks: seconds or a timedelta. Templated.
    :param poll_interval: seconds between warehouse polls; default 10 on PostgreSQL (where a NOTIFY wakes
        the wait at once), 2 elsewhere.
    :param copyleaks_conn_id: the Copyleaks connection (its webhook_base_url goes in timeout messages).
    :param warehouse_conn_id: the warehouse connection.
    """

    operator_extra_links = (AuditReportLink(),)
    template_fields: Sequence[str] = ("target_dag_id", "target_run_id", "wait_timeout")

    def __init__(
        self,
        *,
        target_dag_id: str | None = None,
        target_run_id: str | None = None,
        wait_timeout: float | timedelta | str = DEFAULT_WAIT_TIMEOUT,
        poll_interval: float | None = None,
        copyleaks_conn_id: str = DEFAULT_CONN_ID,
        warehouse_conn_id: str = DEFAULT_WAREHOUSE_CONN_ID,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.copyleaks_conn_id = copyleaks_conn_id
        self.warehouse_conn_id = warehouse_conn_id
        self.target_dag_id = target_dag_id
        self.target_run_id = target_run_id
        self.wait_timeout = wait_timeout
        self.poll_interval = poll_interval

    @cached_property
    def _warehouse_url(self) -> str:
        """Looked up once per task try (a secrets backend may be asked), not once per query."""
        return warehouse_url(self.warehouse_conn_id)

    def _engine(self):
        return get_engine(self._warehouse_url)

    def _run_key(self, context: Context) -> tuple[str, str]:
        return self.target_dag_id or context["dag"].dag_id, self.target_run_id or context["run_id"]

    def _poll_interval(self) -> float:
        if self.poll_interval is not None:
            return float(self.poll_interval)
        notified = is_postgres(self._warehouse_url)
        return POLL_INTERVAL_WITH_NOTIFY if notified else POLL_INTERVAL_WITHOUT_NOTIFY

    def _timeout(self) -> timedelta:
        """``wait_timeout`` as rendered (a template may render seconds as a string)."""
        value = self.wait_timeout
        timeout = value if isinstance(value, timedelta) else timedelta(seconds=float(value))
        if timeout < timedelta(0):
            raise ValueError(f"wait_timeout must not be negative, got {value!r}")
        return timeout

    def execute(self, context: Context) -> dict[str, Any]:
        dag_id, run_id = self._run_key(context)
        timeout = self._timeout()
        counts = count_scan_states_sync(self._engine(), dag_id, run_id)
        if waiting(counts) == 0:
            return self._finish(counts, timed_out=0)
        deadline = datetime.now(UTC) + timeout
        self.log.info(
            "%d of %d scans await their Copyleaks callback; waiting (deferred) until %s at the latest",
            waiting(counts),
            sum(counts.values()),
            deadline.isoformat(timespec="seconds"),
        )
        self.defer(
            trigger=ScanResultsTrigger(
                dag_id, run_id, deadline, self._poll_interval(), warehouse_conn_id=self.warehouse_conn_id
            ),
            method_name="execute_complete",
            timeout=timeout + DEFER_GRACE,
        )

    def execute_complete(self, context: Context, event: dict[str, Any] | None = None) -> dict[str, Any]:
        dag_id, run_id = self._run_key(context)
        status = (event or {}).get("status")
        timed_out = 0
        if status == "timeout":
            within = timedelta(seconds=round(self._timeout().total_seconds()))
            reason = f"no Copyleaks callback within {within}; the next run resubmits it"
            counts = count_scan_states_sync(self._engine(), dag_id, run_id)
            if not counts.get(ScanState.COMPLETED.value) and not counts.get(ScanState.FAILED.value):
                reason = self._no_callback_at_all_message(waiting(counts))
                self.log.error("%s", reason)
            timed_out = mark_timed_out(self._engine(), dag_id, run_id, reason)
        elif status == "error":
            raise AirflowException(f"Waiting for the Copyleaks results failed: {event.get('message')}")
        elif status != "done":
            raise AirflowException(f"Unexpected event from the Copyleaks results trigger: {event!r}")
        return self._finish(count_scan_states_sync(self._engine(), dag_id, run_id), timed_out=timed_out)

    def _no_callback_at_all_message(self, waiting_scans: int) -> str:
        """Not one answer in the whole wait: the webhook URL, not Copyleaks, is the likely culprit."""
        try:
            base_url = CopyleaksHook(self.copyleaks_conn_id).settings.webhook_base_url
        except Exception:  # the message matters more than the URL in it
            base_url = None
        return (
            f"No Copyleaks callback arrived for any of the {waiting_scans} scans of this run: check that "
            f"the connection's webhook_base_url ({base_url or 'not set'}) is reachable from Copyleaks "
            "(public HTTPS, routed to the webhook receiver) and that the receiver is running; the next "
            "run resubmits these scans"
        )

    def _finish(self, counts: dict[str, int], *, timed_out: int) -> dict[str, Any]:
        if timed_out:
            self.log.warning(
                "Going on with partial results: %d of %d scans timed out waiting for their Copyleaks "
                "callback (the next run resubmits them). Scans by state: %s",
                timed_out,
                sum(counts.values()),
                counts,
            )
        else:
            self.log.info("Every scan of the run has its answer. Scans by state: %s", counts)
        return {"counts": counts, "timed_out": timed_out, "partial": timed_out > 0}
