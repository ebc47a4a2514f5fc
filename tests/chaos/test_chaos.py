"""Chaos on the distributed deployment (issue 17): kill or cut each component of the local cluster
mid-run, at a moment read from the processes' state, the warehouse or the emulator's counters, and check
that nothing is lost, stored twice or submitted twice, and that the account's budget held.

One cluster serves the whole suite (``tests/chaos/conftest.py``): each scenario is a run of
``image_catalog_audit`` over 100 fresh catalog images in batches of 10 (10 submit tasks), against the
emulator's documented account limits (10 requests/s, 12 logins per 15 minutes). Recovery is the time
from the fault until the work it interrupted is done again. The table of recovery times and figures is
printed at the end of the pytest run.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from datetime import UTC, datetime

import pytest

from image_audit.warehouse.lifecycle import ScanState
from tests.chaos.harness import IMAGES, Chaos, Scenario
from tests.support.polling import wait_for
from tests.support.warehouse import POSTGRES_URL, REDIS_URL

pytestmark = [
    pytest.mark.chaos,
    pytest.mark.serial,
    pytest.mark.slow,
    pytest.mark.skipif(
        not (POSTGRES_URL and REDIS_URL),
        reason="set IMAGE_AUDIT_TEST_POSTGRES_URL and IMAGE_AUDIT_TEST_REDIS_URL to run the chaos suite",
    ),
]

#: Callbacks trail the submissions by 10 to 20 s (the emulator's webhook latency, reordered), so the run
#: is deferred in wait_for_results while they still arrive: from a batch's last acceptance to the wait
#: deferring (the submit task ending, the scheduler queueing the wait, its process starting) took more
#: than the 5 to 10 s of before on a loaded machine, and the scenario never began.
TRAILING_CALLBACKS = {"webhook_latency_ms": 10000, "reorder": True}
#: Each callback comes 1 s after its scan: a batch half sent has callbacks due within the next second,
#: so a fault of a few seconds injected then meets some (the scans accepted just before it).
CALLBACKS_DUE_SOON = {"webhook_latency_ms": 1000}
#: The emulator's first webhook retry comes 4 s after a refused try (then 8, 16, 32 s: about a minute).
FIRST_RETRY_SECONDS = 4
#: An upper bound on each recovery, far above what the fast timers give (so a noisy machine passes),
#: but under what Airflow's defaults would take (5 minutes to declare a dead worker's task failed).
MAX_RECOVERY_SECONDS = 150

SUBMITTED = ScanState.SUBMITTED.value
COMPLETED = ScanState.COMPLETED.value


# --- the moments a fault is injected at --------------------------------------------------------------
def _mid_submission(chaos: Chaos, run_id: str) -> bool:
    """At least 2 submit tasks done and at least 3 not started yet."""
    states = chaos.task_states(run_id, "submit_batch")
    not_started = states[None] + states["scheduled"] + states["queued"]
    return states["success"] >= 2 and not_started >= 3


def _deferred_with_callbacks_arriving(chaos: Chaos, run_id: str) -> bool:
    """wait_for_results deferred in the triggerer, some results stored and some still on their way."""
    if chaos.task_states(run_id, "wait_for_results")["deferred"] != 1:
        return False
    scans = chaos.scan_states(run_id)
    return scans[SUBMITTED] > 0 and scans[COMPLETED] > 0 and chaos.emulator()["in_flight"] > 0


def _at(chaos: Chaos, name: str, moment: Callable[[Chaos, str], bool], what: str, **faults) -> Scenario:
    """Start the scenario's run and return once ``moment`` holds: the fault comes next."""
    scenario = chaos.start_scenario(name, **faults)
    wait_for(lambda: moment(chaos, scenario.run_id), what, timeout=180, interval=0.1)
    return scenario


def _half_way_through_a_batch(chaos: Chaos, name: str, **faults) -> tuple[Scenario, set[str]]:
    """Start the scenario's run and return once a submit task is half way through its batch (by the
    emulator's accepted submissions): the scenario and the batches half sent."""
    scenario = chaos.start_scenario(name, **faults)
    batch_scans = wait_for(lambda: chaos.batch_scans(scenario.run_id), "the run planned", timeout=180)
    half_sent = wait_for(
        lambda: chaos.batches_half_sent(batch_scans), "a batch half sent", timeout=180, interval=0.05
    )
    return scenario, half_sent


# --- recovery ----------------------------------------------------------------------------------------
def _recovered_when(chaos: Chaos, scenario: Scenario, done: Callable[[], bool], what: str) -> None:
    """Recovered at the first moment ``done()`` holds; then the run must end and keep the invariants."""
    wait_for(done, what, timeout=MAX_RECOVERY_SECONDS, interval=0.2)
    scenario.recovered()
    tries = [t["try_number"] for t in chaos.tasks(scenario.run_id, "submit_batch")]
    scenario.notes["retried_tasks"] = sum(1 for n in tries if n > 1)
    chaos.finish(scenario)
    assert scenario.recovery_seconds < MAX_RECOVERY_SECONDS, scenario


# --- the scenarios -----------------------------------------------------------------------------------
def test_celery_worker_killed_mid_batch_then_started_again(chaos):
    """The worker's host dies (SIGKILL to the worker and every task process) while a submit task is half
    way through its batch. Airflow declares the task failed when its heartbeats stop, and its retry
    resubmits what is still pending with the same scan ids."""
    scenario, killed = _half_way_through_a_batch(chaos, "1. Celery worker SIGKILL mid-batch")
    scenario.fault()
    chaos.cluster.kill("airflow-worker")
    chaos.cluster.start_component("airflow-worker")
    _recovered_when(
        chaos,
        scenario,
        lambda: chaos.pending_in(scenario.run_id, killed) == 0,
        "the killed batches submitted by their retries",
    )
    assert scenario.notes["retried_tasks"], "the killed tasks ran again (heartbeat timeout, then retry)"


def test_triggerer_killed_while_deferred_with_callbacks_arriving(chaos):
    """SIGKILL the triggerer while wait_for_results is deferred and callbacks still arrive; start it
    again after a pause. The new triggerer takes the orphaned trigger over once the dead one's
    heartbeat is stale; the results that arrived meanwhile are in the warehouse already."""
    scenario = _at(
        chaos,
        "2. triggerer SIGKILL while deferred",
        _deferred_with_callbacks_arriving,
        "the wait deferred while callbacks arrive",
        **TRAILING_CALLBACKS,
    )
    scenario.fault()
    chaos.cluster.kill("airflow-triggerer")
    completed_at_kill = chaos.scan_states(scenario.run_id)[COMPLETED]
    time.sleep(3)  # the pause before it is started again (part of the fault, not a wait for a moment)
    scenario.notes["stored_while_down"] = chaos.scan_states(scenario.run_id)[COMPLETED] - completed_at_kill
    chaos.cluster.start_component("airflow-triggerer")
    _recovered_when(
        chaos,
        scenario,
        lambda: chaos.task_states(scenario.run_id, "wait_for_results")["success"] == 1,
        "the wait resumed by the restarted triggerer",
    )
    assert scenario.notes["stored_while_down"] > 0, "callbacks were arriving while the triggerer was down"


def test_api_server_stopped_longer_than_a_delivery_try(chaos):
    """The api-server, which receives the callbacks, is stopped (a redeploy) while callbacks are being
    sent, for longer than one Copyleaks delivery try and its first retry wait, then started again:
    Copyleaks' retries deliver what was refused meanwhile."""
    scenario = _at(
        chaos,
        "3. api-server stopped during callbacks",
        _deferred_with_callbacks_arriving,
        "the wait deferred while callbacks are being sent",
        **TRAILING_CALLBACKS,
    )
    before = chaos.emulator()
    scenario.fault()
    chaos.cluster.kill("airflow-apiserver", signal.SIGTERM)

    def refused_tries() -> int:
        now = chaos.emulator()
        unanswered = now["webhooks_sent"] - now["webhooks_acknowledged"]
        return unanswered - (before["webhooks_sent"] - before["webhooks_acknowledged"])

    wait_for(
        lambda: refused_tries() >= 5 and time.monotonic() - scenario.fault_at > FIRST_RETRY_SECONDS + 1,
        "deliveries refused for longer than one try and its retry wait",
        timeout=60,
        interval=0.2,
    )
    scenario.notes["refused_tries"] = refused_tries()
    chaos.cluster.start_component("airflow-apiserver")
    chaos.cluster.wait_healthy()
    _recovered_when(
        chaos,
        scenario,
        lambda: chaos.scan_states(scenario.run_id)[COMPLETED] == IMAGES,
        "every result stored after the restart",
    )


def test_redis_unreachable_for_seconds_mid_run(chaos):
    """The broker goes away for 5 s while submit tasks still wait in it: the worker and the scheduler
    reconnect, and what was queued runs (Celery takes one task at a time at first after a reconnect)."""
    scenario = _at(chaos, "4. Redis unreachable 5 s mid-run", _mid_submission, "submit tasks still queued")
    submit_tasks = chaos.task_states(scenario.run_id, "submit_batch").total()
    scenario.fault()
    chaos.redis_proxy.cut()
    time.sleep(5)  # the outage (its length is the fault's, not a wait for a moment)
    chaos.redis_proxy.restore()
    _recovered_when(
        chaos,
        scenario,
        lambda: chaos.task_states(scenario.run_id, "submit_batch")["success"] == submit_tasks,
        "every submit task queued in the broker run",
    )


def test_scheduler_killed_and_restarted_mid_run(chaos):
    """SIGKILL the scheduler (and its executor) while submit tasks run and others wait; a new one starts
    2 s later, adopts or resets what the dead one had queued, and schedules the rest of the run."""
    scenario = _at(chaos, "5. scheduler SIGKILL mid-run", _mid_submission, "submit tasks running and waiting")
    scenario.fault()
    chaos.cluster.kill("airflow-scheduler")
    time.sleep(2)  # the pause before it is started again (part of the fault, not a wait for a moment)
    restarted_at = datetime.now(UTC)
    chaos.cluster.start_component("airflow-scheduler")
    _recovered_when(
        chaos,
        scenario,
        lambda: any((t["queued_dttm"] or restarted_at) > restarted_at for t in chaos.tasks(scenario.run_id)),
        "a task queued by the restarted scheduler",
    )


def test_warehouse_cut_while_submit_tasks_record_answers(chaos):
    """The warehouse (and with it the account state, on the same PostgreSQL) is cut for 3 s while a
    submit task is half way through its batch, recording Copyleaks' answers. The task rides the outage
    out (its warehouse reads and writes are tried again, its requests wait for their send slots), so
    no task try is lost to it; callbacks refused meanwhile (503) are delivered again."""
    scenario, cut = _half_way_through_a_batch(chaos, "6. warehouse cut while recording", **CALLBACKS_DUE_SOON)
    before = chaos.emulator()
    scenario.fault()
    chaos.warehouse_proxy.cut()
    time.sleep(3)  # the outage (its length is the fault's, not a wait for a moment)
    chaos.warehouse_proxy.restore()
    _recovered_when(
        chaos,
        scenario,
        lambda: chaos.pending_in(scenario.run_id, cut) == 0,
        "the batches half sent at the cut submitted and recorded",
    )
    after = scenario.emulator_at_end  # the next scenario's run may have reset the emulator since
    refused = (after["webhooks_sent"] - after["webhooks_acknowledged"]) - (
        before["webhooks_sent"] - before["webhooks_acknowledged"]
    )
    counters = ("webhooks_sent", "webhooks_acknowledged", "webhooks_failed", "scans_completed")
    seen = {when: {k: values[k] for k in counters} for when, values in (("before", before), ("after", after))}
    assert refused > 0, f"the receiver answered 503 during the cut, and Copyleaks delivered again: {seen}"
    assert scenario.notes["retried_tasks"] == 0, "a 3 s outage costs no task its try"
