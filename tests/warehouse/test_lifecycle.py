"""The scan lifecycle (``image_audit.warehouse.lifecycle``) as the code makes it, on SQLite and PostgreSQL.

Every documented transition is driven through the function that makes it (planning, the submit task's
recording, the receiver's storing of callbacks, the wait's deadline), and every event reaching a scan in
a state the lifecycle does not move on that event leaves the state alone: a late or duplicated event
never undoes a later one (a late error never undoes ``completed``).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

import pytest
from sqlalchemy import select

from copyleaks_provider.scan_ids import DEFAULT_MODEL
from image_audit.planning import PlanOptions, RunContext, plan_run
from image_audit.planning.catalog import CatalogSpec
from image_audit.warehouse import scans
from image_audit.warehouse.engine import get_engine
from image_audit.warehouse.lifecycle import TERMINAL_STATES, TRANSITIONS, WAITING_STATES, ScanState
from image_audit.warehouse.progress import mark_timed_out
from image_audit.warehouse.schema import audit_scans, image_catalog
from tests.support.factories import (
    DAG_ID,
    DAY,
    documented_error_body,
    insert_scans,
    new_scan,
    result_body,
)
from tests.support.warehouse import callback, scan_row, store, unrecognised

S = ScanState
RUN = "run-1"


def test_every_state_is_reached_and_only_waiting_states_wait():
    assert {t.target for t in TRANSITIONS} == set(ScanState)
    assert set(ScanState) == TERMINAL_STATES | WAITING_STATES and not TERMINAL_STATES & WAITING_STATES
    # An attempt never goes back to pending: a retry is a new row.
    assert not [t for t in TRANSITIONS if t.source is not None and t.target == S.PENDING]
    # Only a result leaves a terminal state (a result always wins).
    assert {t.target for t in TRANSITIONS if t.source == S.TIMED_OUT} <= {S.COMPLETED, S.FAILED}
    assert {t.target for t in TRANSITIONS if t.source == S.FAILED} == {S.COMPLETED}
    assert {t.target for t in TRANSITIONS if t.source == S.REJECTED} == {S.COMPLETED}
    assert not [t for t in TRANSITIONS if t.source == S.COMPLETED]


# --- the events that move a scan, each through the function that handles it ---------------------------
def _submit_accepted(url: str, scan_id: str) -> None:
    """The submit task records Copyleaks' 201 (or 409)."""
    scans.record_transitions(get_engine(url), [(scan_id, S.SUBMITTED, None)])


def _submit_refused(url: str, scan_id: str) -> None:
    """The submit task records an invalid request, or Copyleaks' 400."""
    scans.record_transitions(get_engine(url), [(scan_id, S.REJECTED, "Copyleaks refused the request (400)")])


def _result_callback(url: str, scan_id: str) -> None:
    store(url, [callback(scan_id, result_body(scan_id))])


def _error_callback(url: str, scan_id: str) -> None:
    store(url, [callback(scan_id, documented_error_body())])


def _unrecognised_callback(url: str, scan_id: str) -> None:
    store(url, [unrecognised(scan_id, {"event": "something new"})])


def _wait_deadline(url: str, scan_id: str) -> None:
    """The wait's deadline passes for the scan's run."""
    mark_timed_out(get_engine(url), DAG_ID, RUN, "no Copyleaks callback before the deadline")


#: Each event, and the state it moves a scan to where the lifecycle says it may.
EVENTS: dict[str, tuple[Callable[[str, str], None], ScanState]] = {
    "submit accepted": (_submit_accepted, S.SUBMITTED),
    "submit refused": (_submit_refused, S.REJECTED),
    "result callback": (_result_callback, S.COMPLETED),
    "error callback": (_error_callback, S.FAILED),
    "unrecognised callback": (_unrecognised_callback, S.FAILED),
    "wait deadline": (_wait_deadline, S.TIMED_OUT),
}
DOCUMENTED = {(t.source, t.target) for t in TRANSITIONS}


#: Where the code and the lifecycle disagree today, to be settled in the code (lifecycle.TRANSITIONS or
#: warehouse.results): a callback for a ``rejected`` scan (never sent) still completes or fails it.
#: Strict: once they agree, these cases pass and the mark must go.
def test_every_documented_change_of_an_existing_scan_has_an_event_here():
    driven = {(state, target) for state in ScanState for _, target in EVENTS.values()}
    assert {(t.source, t.target) for t in TRANSITIONS if t.source is not None} <= driven


@pytest.mark.parametrize("event", list(EVENTS))
@pytest.mark.parametrize("state", list(ScanState), ids=str)
def test_an_event_moves_a_scan_only_as_the_lifecycle_says(warehouse_url, state, event):
    make, target = EVENTS[event]
    insert_scans(warehouse_url, [new_scan("scan-1", state, run_id=RUN)])
    insert_scans(warehouse_url, [new_scan("bystander", S.SUBMITTED, run_id="run-2")])
    make(warehouse_url, "scan-1")
    expected = target if (state, target) in DOCUMENTED else state
    assert scan_row(warehouse_url, "scan-1")["state"] == expected.value, (
        f"{event} on a {state.value} scan: the lifecycle says {expected.value}"
    )
    assert scan_row(warehouse_url, "bystander")["state"] == S.SUBMITTED.value  # another run's scan


def test_a_late_error_never_undoes_a_result_and_a_result_still_wins_over_an_error(warehouse_url):
    insert_scans(warehouse_url, [new_scan("scan-1", S.SUBMITTED, run_id=RUN)])
    _error_callback(warehouse_url, "scan-1")
    failed = scan_row(warehouse_url, "scan-1")
    assert (failed["state"], bool(failed["last_error"])) == (S.FAILED.value, True)
    _result_callback(warehouse_url, "scan-1")
    _error_callback(warehouse_url, "scan-1")
    _unrecognised_callback(warehouse_url, "scan-1")
    _wait_deadline(warehouse_url, "scan-1")
    completed = scan_row(warehouse_url, "scan-1")
    assert (completed["state"], completed["last_error"]) == (S.COMPLETED.value, None)


# --- rows come into being only through planning ---------------------------------------------------------
def _catalog_row(image_id: str, url: str | None, day_offset: int = 0) -> dict:
    return {
        "image_id": image_id,
        "url": url,
        "file_name": f"{image_id}.jpg",
        "source": "shop",
        "ingested_at": DAY + timedelta(days=day_offset, hours=1),
        "fetch_headers_ref": None,
    }


def _plan(engine, run_id: str, day_offset: int) -> None:
    start = DAY + timedelta(days=day_offset)
    run = RunContext(DAG_ID, run_id, start, start + timedelta(days=1))
    plan_run(engine, CatalogSpec(), run, PlanOptions(model=DEFAULT_MODEL))


def _attempts(engine, image_id: str) -> list[tuple[int, str]]:
    query = select(audit_scans.c.attempt, audit_scans.c.state).where(audit_scans.c.image_id == image_id)
    with engine.connect() as conn:
        return sorted(tuple(row) for row in conn.execute(query))


def test_planning_creates_pending_scans_rejects_bad_rows_and_retries_with_a_new_row(warehouse_url):
    engine = get_engine(warehouse_url)
    with engine.begin() as conn:
        conn.execute(
            image_catalog.insert(),
            [_catalog_row("good", "https://cdn.example.com/good.jpg"), _catalog_row("no-url", None)],
        )
    _plan(engine, RUN, 0)
    assert _attempts(engine, "good") == [(1, S.PENDING.value)]
    assert _attempts(engine, "no-url") == [(1, S.REJECTED.value)]
    assert {(None, S.PENDING), (None, S.REJECTED)} <= DOCUMENTED

    # The scan is sent, its callback never comes: a later run retries it as a new attempt, a new row
    with engine.connect() as conn:
        [scan_id] = conn.execute(
            select(audit_scans.c.scan_id).where(audit_scans.c.image_id == "good")
        ).scalars()
    _submit_accepted(warehouse_url, scan_id)
    _wait_deadline(warehouse_url, scan_id)
    _plan(engine, "run-2", 1)
    assert _attempts(engine, "good") == [(1, S.TIMED_OUT.value), (2, S.PENDING.value)]
    assert _attempts(engine, "no-url") == [(1, S.REJECTED.value)]  # a rejected row is not retried
