"""``WaitForScanResultsOperator`` (a deferring operator, not a sensor) in real Airflow runs (``dag.test``
runs its trigger in-process) and on its own, on real warehouses."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from airflow.sdk.exceptions import AirflowException, TaskDeferred
from sqlalchemy import select

from image_audit.config import warehouse_url
from image_audit.operators.wait import DEFER_GRACE, WaitForScanResultsOperator
from image_audit.triggers.scan_results import ScanResultsTrigger
from image_audit.warehouse.engine import get_engine
from image_audit.warehouse.lifecycle import ScanState
from image_audit.warehouse.schema import audit_scans
from tests.support.polling import wait_for
from tests.support.triggers import PollWatch, complete, seed

WAIT_TASK = "wait_for_results"
#: What ``seed_run`` puts in a run: three scans await their callback; the others do not count.
SEEDED = {ScanState.SUBMITTED: 3, ScanState.COMPLETED: 1, ScanState.PENDING: 1}
#: Polls of the trigger that find the seeded run still waiting before its callbacks arrive.
WAITING_POLLS = 5


def _wait_dag(dag_id: str, **wait_kwargs):
    """seed the run's scans -> the wait (defaults to its own run), like the audit DAG's tail."""
    from airflow.sdk import DAG, get_current_context, task

    with DAG(dag_id, schedule=None, start_date=datetime(2026, 1, 1, tzinfo=UTC), catchup=False) as dag:

        @task
        def seed_run() -> None:
            context = get_current_context()
            seed(warehouse_url(), context["run_id"], SEEDED, dag_id=context["dag"].dag_id)

        seed_run() >> WaitForScanResultsOperator(task_id=WAIT_TASK, poll_interval=0.2, **wait_kwargs)
    _serialize(dag)
    return dag


def _serialize(dag) -> None:
    """Write a DAG defined in a test into the metadata database, as the dag-processor would (``dag.test``
    re-parses only the configured bundles, which do not hold it)."""
    from airflow.dag_processing.bundles.manager import DagBundlesManager
    from airflow.dag_processing.collection import update_dag_parsing_results_in_db
    from airflow.serialization.serialized_objects import LazyDeserializedDAG
    from airflow.utils.session import create_session

    DagBundlesManager().sync_bundles_to_db()
    with create_session() as session:
        update_dag_parsing_results_in_db(
            "dags-folder", None, [LazyDeserializedDAG.from_dag(dag)], {}, None, set(), session=session
        )


def _wait_state(dag_id: str) -> str | None:
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session

    with create_session() as session:
        return session.scalar(
            select(TaskInstance.state).where(TaskInstance.dag_id == dag_id, TaskInstance.task_id == WAIT_TASK)
        )


class _Receiver(threading.Thread):
    """Stands in for the webhook receiver: once the wait is deferred, the run's callbacks arrive.

    ``dag.test`` marks a deferred task ``queued`` while it runs the trigger in line, so "waiting" is
    the wait's task instance queued again after its first try handed over to the trigger. The
    callbacks arrive once a few polls of the trigger (watched by ``polls``) found the scans waiting.
    """

    def __init__(self, url: str, dag_id: str, polls: PollWatch):
        super().__init__(daemon=True)
        self.url, self.dag_id, self.polls = url, dag_id, polls
        self.saw_waiting = False
        self.run_ended = threading.Event()  # dag.test returned: nothing is left to wait for
        self.failure: str | None = None  # what it waited for in vain (a thread cannot fail the test)

    def stop(self) -> None:
        self.run_ended.set()
        self.polls.wake()

    def run(self) -> None:
        seen: list[str | None] = []

        def deferred() -> bool:  # polled: the metadata database signals no change of a task's state
            state = _wait_state(self.dag_id)
            if not seen or seen[-1] != state:
                seen.append(state)
            self.saw_waiting = "queued" in seen and seen[-1] in ("deferred", "queued") and len(seen) > 1
            return self.saw_waiting or self.run_ended.is_set()

        with contextlib.suppress(AssertionError):  # not seen in time: the test's saw_waiting says so
            wait_for(deferred, "the wait operator deferred to its trigger", timeout=30, interval=0.05)
        with get_engine(self.url).connect() as conn:
            run_id = conn.scalar(select(audit_scans.c.run_id).where(audit_scans.c.dag_id == self.dag_id))
        waiting = SEEDED[ScanState.SUBMITTED]
        what = f"{WAITING_POLLS} polls of the trigger finding the run's {waiting} scans still waiting"

        def polled() -> bool:
            return self.polls.finding(run_id, waiting, dag_id=self.dag_id) >= WAITING_POLLS

        try:
            self.polls.wait_for(what, lambda: polled() or self.run_ended.is_set(), timeout=20)
        except AssertionError as exc:
            self.failure = str(exc)  # call back even so: the run ends now, not at its 60 s timeout
        if not polled() and self.run_ended.is_set():
            self.failure = f"the DAG run ended before {what}"
            return
        complete(self.url, run_id, dag_id=self.dag_id)


def _wait_result(dag_run) -> dict:
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        row = session.scalars(
            XComModel.get_many(
                run_id=dag_run.run_id, dag_ids=dag_run.dag_id, task_ids=WAIT_TASK, key="return_value"
            )
        ).one()
        return XComModel.deserialize_value(row)


def _scan_states(url: str, dag_id: str) -> dict[str, list]:
    with get_engine(url).connect() as conn:
        rows = conn.execute(
            select(audit_scans.c.state, audit_scans.c.last_error).where(audit_scans.c.dag_id == dag_id)
        ).all()
    states: dict[str, list] = {}
    for state, last_error in rows:
        states.setdefault(state, []).append(last_error)
    return states


def test_dag_run_waits_deferred_until_the_callbacks_arrive(warehouse_url, airflow_db, caplog, monkeypatch):
    dag_id = f"wait_done_{uuid.uuid4().hex[:8]}"
    dag = _wait_dag(dag_id, wait_timeout=60)
    receiver = _Receiver(warehouse_url, dag_id, PollWatch(monkeypatch))
    receiver.start()
    started = time.monotonic()
    with caplog.at_level(logging.INFO, logger="airflow.sdk.definitions.dag"):
        dag_run = dag.test()
    receiver.stop()
    receiver.join(timeout=5)

    assert receiver.saw_waiting
    assert receiver.failure is None, receiver.failure
    # The wait deferred (gave its worker slot back): its wait ran as a trigger, not in the task.
    assert "running trigger in line" in caplog.text
    assert time.monotonic() - started < 30, "done when the callbacks arrived, not at the 60 s timeout"
    assert dag_run.state == "success"
    counts = {"completed": 4, "pending": 1}
    assert _wait_result(dag_run) == {"counts": counts, "timed_out": 0, "partial": False}


def test_dag_run_goes_on_with_partial_results_when_the_wait_times_out(warehouse_url, airflow_db):
    dag_id = f"wait_timeout_{uuid.uuid4().hex[:8]}"
    dag_run = _wait_dag(dag_id, wait_timeout="2").test()  # a template renders seconds as text

    assert dag_run.state == "success"  # the report still runs
    counts = {"timed_out": 3, "completed": 1, "pending": 1}
    assert _wait_result(dag_run) == {"counts": counts, "timed_out": 3, "partial": True}
    states = _scan_states(warehouse_url, dag_id)
    assert states["timed_out"] == ["no Copyleaks callback within 0:00:02; the next run resubmits it"] * 3
    assert states["completed"] == [None] and states["pending"] == [None]  # untouched


# --- execute / execute_complete directly: the decisions without a DAG run ----------------------------


def _context(dag_id: str, run_id: str) -> dict:
    from airflow.sdk import DAG

    return {"dag": DAG(dag_id, schedule=None), "run_id": run_id}


def test_nothing_waits_returns_at_once_without_deferring(sqlite_warehouse_url):
    seed(sqlite_warehouse_url, "run-1", {ScanState.COMPLETED: 2, ScanState.FAILED: 1, ScanState.PENDING: 1})
    wait = WaitForScanResultsOperator(task_id="wait")
    summary = wait.execute(_context("image_catalog_audit", "run-1"))
    assert summary == {
        "counts": {"completed": 2, "failed": 1, "pending": 1},
        "timed_out": 0,
        "partial": False,
    }


def test_waiting_scans_defer_to_the_trigger_with_the_deadline(sqlite_warehouse_url):
    seed(sqlite_warehouse_url, "run-2", {ScanState.SUBMITTED: 1}, dag_id="other_dag")
    wait = WaitForScanResultsOperator(
        task_id="wait",
        target_dag_id="other_dag",
        target_run_id="run-2",
        wait_timeout=timedelta(minutes=5),
        poll_interval=2,
    )
    before = datetime.now(UTC)
    with pytest.raises(TaskDeferred) as deferred:
        wait.execute(_context("image_catalog_audit", "run-1"))
    trigger = deferred.value.trigger
    assert isinstance(trigger, ScanResultsTrigger)
    assert deferred.value.method_name == "execute_complete"
    assert (trigger.dag_id, trigger.run_id, trigger.poll_interval) == ("other_dag", "run-2", 2.0)
    assert before + timedelta(minutes=5) <= trigger.deadline <= datetime.now(UTC) + timedelta(minutes=5)
    # With no triggerer to run it, the deferral itself times out and fails the task (not deferred forever).
    assert deferred.value.timeout == timedelta(minutes=5) + DEFER_GRACE


def test_the_default_poll_is_short_without_notify_and_a_safety_net_with_it(warehouse_url):
    """SQLite has no NOTIFY: polling is how the wait sees results, so it polls every 2 s, not 10."""
    seed(warehouse_url, "run-3", {ScanState.SUBMITTED: 1})
    wait = WaitForScanResultsOperator(task_id="wait", target_run_id="run-3")
    with pytest.raises(TaskDeferred) as deferred:
        wait.execute(_context("image_catalog_audit", "run-3"))
    expected = 10.0 if warehouse_url.startswith("postgresql") else 2.0
    assert deferred.value.trigger.poll_interval == expected


def test_an_error_event_fails_the_task(sqlite_warehouse_url):
    wait = WaitForScanResultsOperator(task_id="wait")
    context = _context("image_catalog_audit", "run-1")
    with pytest.raises(AirflowException, match="OperationalError: database is locked"):
        wait.execute_complete(context, {"status": "error", "message": "OperationalError: database is locked"})
    with pytest.raises(AirflowException, match="Unexpected event"):
        wait.execute_complete(context, None)
