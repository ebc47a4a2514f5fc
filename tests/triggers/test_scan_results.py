"""The waiting trigger on real warehouses: done, timeout, error, one shared stream for many runs, NOTIFY."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
from airflow.sdk.serde import deserialize, serialize
from airflow.triggers.shared_stream import SharedStreamManager
from sqlalchemy import text

from image_audit.triggers.scan_results import ScanResultsTrigger
from image_audit.warehouse.engine import get_engine
from image_audit.warehouse.lifecycle import ScanState
from tests.support.factories import DAG_ID
from tests.support.triggers import PollWatch, complete, seed
from tests.support.warehouse import requires_postgres


def trigger_for(run_id: str, *, wait: float = 60, poll_interval: float = 0.1) -> ScanResultsTrigger:
    return ScanResultsTrigger(
        DAG_ID, run_id, datetime.now(UTC) + timedelta(seconds=wait), poll_interval=poll_interval
    )


async def first_event(trigger: ScanResultsTrigger, timeout: float = 20) -> dict:
    """Like ``dag.test``: the first event of ``run()``."""
    events = trigger.run()
    try:
        return (await asyncio.wait_for(anext(events), timeout)).payload
    finally:
        await events.aclose()


def test_serialize_round_trips_through_airflow_serde_and_holds_no_url(monkeypatch):
    monkeypatch.setenv(
        "AIRFLOW_CONN_IMAGE_AUDIT_WAREHOUSE", "postgresql://audit:pw-s3cret@db.example/warehouse"
    )
    trigger = trigger_for("run-1", poll_interval=3)
    classpath, kwargs = trigger.serialize()
    assert classpath == "image_audit.triggers.scan_results.ScanResultsTrigger"
    assert set(kwargs) == {"dag_id", "run_id", "deadline", "poll_interval", "warehouse_conn_id"}
    assert kwargs["warehouse_conn_id"] == "image_audit_warehouse"  # the id, never the URL
    encoded = serialize(kwargs)  # what the task sends with DeferTask and the triggerer decodes
    assert "pw-s3cret" not in json.dumps(encoded) and "db.example" not in json.dumps(encoded)
    again = ScanResultsTrigger(**deserialize(encoded))
    assert again.serialize() == (classpath, kwargs)
    assert again.deadline == trigger.deadline and again.deadline.tzinfo is not None
    assert again.shared_stream_key() == trigger.shared_stream_key()
    assert trigger_for("run-2", poll_interval=3).shared_stream_key() == trigger.shared_stream_key()
    assert trigger_for("run-1", poll_interval=5).shared_stream_key() != trigger.shared_stream_key()
    other = ScanResultsTrigger(DAG_ID, "run-1", trigger.deadline, 3, warehouse_conn_id="other_warehouse")
    assert other.shared_stream_key() != trigger.shared_stream_key()  # another warehouse, another stream
    with pytest.raises(ValueError, match="timezone-aware"):
        ScanResultsTrigger(DAG_ID, "run-1", datetime(2026, 1, 1))


async def test_done_once_every_scan_has_called_back(warehouse_url, monkeypatch):
    seed(warehouse_url, "run-done", {ScanState.SUBMITTED: 3, ScanState.COMPLETED: 1, ScanState.PENDING: 1})
    seed(warehouse_url, "run-other", {ScanState.SUBMITTED: 1})  # another run's wait is not ours
    polls = PollWatch(monkeypatch)
    waiter = asyncio.create_task(first_event(trigger_for("run-done")))
    await polls.until(
        "5 polls finding run-done's 3 scans waiting",
        lambda: polls.finding("run-done", 3) >= 5,
        unless=[waiter],
    )
    assert not waiter.done()  # three scans still await their callback: five polls said so
    await asyncio.to_thread(complete, warehouse_url, "run-done")
    assert await waiter == {"status": "done", "waiting": 0}  # pending scans are not waited for


async def test_timeout_reports_what_is_still_waiting(warehouse_url):
    seed(warehouse_url, "run-slow", {ScanState.SUBMITTED: 2})
    assert await first_event(trigger_for("run-slow", wait=0.5)) == {"status": "timeout", "waiting": 2}
    # a deadline that passed while the trigger was queued: time out at once, without a poll
    assert await first_event(trigger_for("run-slow", wait=-5)) == {"status": "timeout", "waiting": None}


async def test_a_warehouse_it_cannot_use_is_an_error_event(monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_IMAGE_AUDIT_WAREHOUSE", "mysql://audit:pw-s3cret@127.0.0.1/warehouse")
    event = await first_event(trigger_for("run-1"))
    assert event["status"] == "error" and "unsupported warehouse database" in event["message"]
    assert "pw-s3cret" not in event["message"]


class CountingTrigger(ScanResultsTrigger):
    """The real trigger, counting how many poll loops the triggerer opens."""

    opened = 0

    @classmethod
    async def open_shared_stream(cls, kwargs):
        cls.opened += 1
        async for snapshot in super().open_shared_stream(kwargs):
            yield snapshot


async def test_many_runs_share_one_poll_loop_in_the_triggerers_stream_manager(warehouse_url, monkeypatch):
    """Airflow's own SharedStreamManager (the triggerer's) fans one poll out to each run's filter."""
    CountingTrigger.opened = 0
    polls = PollWatch(monkeypatch)
    runs = ["run-a", "run-b", "run-c"]
    for run in runs:
        seed(warehouse_url, run, {ScanState.SUBMITTED: 2, ScanState.COMPLETED: 1})
    manager = SharedStreamManager()
    deadline = datetime.now(UTC) + timedelta(seconds=60)
    triggers = [CountingTrigger(DAG_ID, run, deadline, poll_interval=0.1) for run in runs]
    triggers.append(CountingTrigger(DAG_ID, "run-c", deadline + timedelta(seconds=1), poll_interval=0.1))

    async def wait(trigger_id: int, trigger) -> dict:
        key = trigger.shared_stream_key()
        try:
            stream = manager.subscribe(trigger_id=trigger_id, trigger=trigger, key=key)
            async for event in trigger.filter_shared_stream(stream):
                return event.payload
        finally:
            await manager.unsubscribe(trigger_id, key)

    def all_waiting(runs: list[str], polls_judged: int, since: int = 0) -> Callable[[], bool]:
        """Every wait has judged ``polls_judged`` polls finding its run's 2 scans waiting (PollWatch)."""
        return lambda: all(polls.finding(run, 2, since=since) >= polls_judged + 1 for run in runs)

    waits = [asyncio.create_task(wait(i, t)) for i, t in enumerate(triggers)]
    try:
        await polls.until("5 polls judged finding every run waiting", all_waiting(runs, 5), unless=waits)
        assert not any(w.done() for w in waits)
        await asyncio.to_thread(complete, warehouse_url, "run-b")
        assert await asyncio.wait_for(waits[1], 10) == {"status": "done", "waiting": 0}
        since = len(polls.snapshots)
        await polls.until(
            "3 more polls judged finding run-a and run-c waiting",
            all_waiting(["run-a", "run-c"], 3, since),
            unless=[waits[0], waits[2], waits[3]],
        )
        assert not any(w.done() for w in (waits[0], waits[2], waits[3]))
        await asyncio.to_thread(complete, warehouse_url, "run-c")  # two triggers wait on run-c
        assert await asyncio.wait_for(waits[2], 10) == await asyncio.wait_for(waits[3], 10)
        await asyncio.to_thread(complete, warehouse_url, "run-a")
        assert (await asyncio.wait_for(waits[0], 10))["status"] == "done"
    finally:
        for w in waits:
            w.cancel()
        await asyncio.gather(*waits, return_exceptions=True)
        await manager.stop_all()
    assert CountingTrigger.opened == 1


@pytest.fixture
def postgres_url(postgres_databases, monkeypatch):
    """A migrated PostgreSQL warehouse, for what only PostgreSQL has (NOTIFY, killable backends)."""
    from image_audit.warehouse.schema import migrate

    url = postgres_databases.create()
    monkeypatch.setenv("AIRFLOW_CONN_IMAGE_AUDIT_WAREHOUSE", url)
    migrate(get_engine(url))
    yield url
    postgres_databases.drop(url)


async def listening_backends(url: str) -> set[int]:
    """The backends of the database whose last statement was a LISTEN: the wait's notification connections."""

    def query() -> set[int]:
        with get_engine(url).connect() as conn:
            pids = conn.execute(
                text(
                    "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
                    "AND pid <> pg_backend_pid() AND query ILIKE 'LISTEN %'"
                )
            ).scalars()
            return set(pids)

    return await asyncio.to_thread(query)


async def _waiting_after_the_first_poll(url: str, run_id: str, scans: int, monkeypatch):
    """A wait on ``run_id`` (its ``scans`` submitted) polling every 30 s, once its first poll is done:
    the poll watch and the waiting task."""
    seed(url, run_id, {ScanState.SUBMITTED: scans})
    polls = PollWatch(monkeypatch)
    waiter = asyncio.create_task(first_event(trigger_for(run_id, poll_interval=30), timeout=25))
    await polls.until("the first poll", lambda: polls.finding(run_id, scans) >= 1, unless=[waiter])
    return polls, waiter


@requires_postgres
async def test_postgres_notify_wakes_the_wait_long_before_the_next_poll(postgres_url, monkeypatch):
    warehouse_url = postgres_url
    loop = asyncio.get_running_loop()
    _, waiter = await _waiting_after_the_first_poll(warehouse_url, "run-notify", 2, monkeypatch)
    # the first poll is done (the loop listens before it polls): the next one is 30 s away
    assert len(await listening_backends(warehouse_url)) == 1, "the wait does not LISTEN"
    completed_at = loop.time()
    await asyncio.to_thread(complete, warehouse_url, "run-notify", notify=True)
    assert await waiter == {"status": "done", "waiting": 0}
    assert loop.time() - completed_at < 10  # woken by the NOTIFY, not by the 30 s poll


@requires_postgres
async def test_postgres_wait_survives_its_connections_being_killed(postgres_url, monkeypatch):
    """A restarted database: the poll reconnects, LISTEN comes back, and a NOTIFY still wakes the wait."""
    warehouse_url = postgres_url
    loop = asyncio.get_running_loop()
    polls, waiter = await _waiting_after_the_first_poll(warehouse_url, "run-restart", 1, monkeypatch)
    listening = await listening_backends(warehouse_url)
    assert len(listening) == 1, "the wait does not LISTEN"
    with get_engine(warehouse_url).connect() as conn:
        killed = conn.execute(
            text(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        ).scalar_one()
    assert killed >= 1  # at least the LISTEN connection
    # The lost LISTEN connection wakes the loop, which listens again, then polls every run.
    since = len(polls.snapshots)
    await polls.until(
        "a poll after the kill", lambda: polls.finding("run-restart", 1, since=since) >= 1, unless=[waiter]
    )
    relistening = await listening_backends(warehouse_url) - listening  # a killed backend may linger a moment
    assert len(relistening) == 1, "LISTEN is not back on a new connection"
    assert not waiter.done()
    completed_at = loop.time()
    await asyncio.to_thread(complete, warehouse_url, "run-restart", notify=True)
    assert await waiter == {"status": "done", "waiting": 0}
    assert loop.time() - completed_at < 10  # the new LISTEN heard it: the next poll is 30 s away
