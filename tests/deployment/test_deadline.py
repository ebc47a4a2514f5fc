"""The audit's deadline on the real scheduler: a run kept waiting past its deadline sends exactly one alert,
with its figures, through a real SMTP server on loopback; a run that finishes in time sends none.

One local cluster (scheduler, dag-processor, triggerer, api-server, Celery worker on PostgreSQL and Redis),
its DAG parsed with ``IMAGE_AUDIT_MAX_RUN_HOURS`` at 60 s, and ``IMAGE_AUDIT_FINISH_BY`` hours away (its
deadline is created and decoded through the plugin, and never due while the test runs). Two runs overlap:
the slow one's webhooks are all dropped by the emulator, so its wait cannot finish; the fast one, triggered
once the slow one's results are lost, has its webhooks delivered and ends inside its minute.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta
from urllib.parse import quote

import httpx
import pytest
from sqlalchemy import text

from image_audit.notifications.deadline import FINISH_BY_ENV, MAX_RUN_HOURS_ENV, next_clock_time
from image_audit.warehouse.engine import get_engine
from image_audit_dev.cluster import LocalCluster
from image_audit_dev.sample_catalog import sample_catalog_rows, seed_catalog
from tests.support.alerts import RECIPIENT, SENDER, smtp_server
from tests.support.alerts import body as _body
from tests.support.alerts import text as _text
from tests.support.cluster import CLUSTER_TEST, running_cluster
from tests.support.polling import wait_for

pytestmark = CLUSTER_TEST

DAG_ID = "image_catalog_audit"
#: Each run's deadline: this long after it was queued. The fast run must end inside it on a loaded
#: machine (it takes about half of it here); the slow run's alert comes about this long after its start.
MAX_RUN = timedelta(seconds=60)
IMAGES = 4
SLOW_DAY, FAST_DAY = datetime(2026, 11, 20, tzinfo=UTC), datetime(2026, 11, 22, tzinfo=UTC)


@pytest.fixture
def smtp_relay():
    with smtp_server() as server:
        yield server


@pytest.fixture
def cluster(tmp_path, smtp_relay):
    """A cluster on databases of its own whose ``smtp_default`` is the loopback SMTP server; stopped and
    its databases dropped even when the test fails (the logs stay under tmp_path)."""
    far_clock = (datetime.now(UTC) + timedelta(hours=12)).strftime("%H:%M")
    with running_cluster(
        tmp_path,
        redis_db=6,
        prefix="ia_deadline",
        extra_env={
            MAX_RUN_HOURS_ENV: repr(MAX_RUN.total_seconds() / 3600),
            FINISH_BY_ENV: far_clock,
            "AIRFLOW_CONN_SMTP_DEFAULT": json.dumps(smtp_relay.connection),
        },
    ) as local:
        yield local


def _catalog(cluster: LocalCluster, source: str, day: datetime) -> list[dict]:
    """``IMAGES`` good catalog rows of ``source`` ingested on ``day``, named after the source."""
    rows = sample_catalog_rows(f"{cluster.emulator_url}/samples", IMAGES, start=day, bad_rows=False)
    for row in rows:
        row["image_id"] = f"{source}-{row['image_id']}"
        row["url"] = row["url"].replace("/img-", f"/{source}-img-")
        row["source"] = source
    return rows


def _deadlines(metadata, run_id: str) -> list[dict]:
    """The run's deadlines in the metadata database, with the run's queued_at and end_date and the state
    of each deadline's callback."""
    query = text(
        "SELECT d.deadline_time, d.missed, c.state AS callback_state, r.queued_at, r.end_date "
        "FROM deadline d JOIN dag_run r ON r.id = d.dagrun_id JOIN callback c ON c.id = d.callback_id "
        "WHERE r.dag_id = :dag_id AND r.run_id = :run_id ORDER BY d.deadline_time"
    )
    with metadata.connect() as conn:
        return [dict(row._mapping) for row in conn.execute(query, {"dag_id": DAG_ID, "run_id": run_id})]


def _trigger(cluster: LocalCluster, source: str, day: datetime) -> str:
    """A manual run auditing ``day``'s rows of ``source``, its alerts e-mailed to ``RECIPIENT``."""
    conf = {"source_filter": source, "alert_to": RECIPIENT}
    return cluster.trigger_dag_run(DAG_ID, (day + timedelta(days=1)).isoformat(), conf=conf)


def _emulator(cluster: LocalCluster, method: str, path: str, **kwargs) -> dict:
    response = httpx.request(method, f"{cluster.emulator_url}{path}", timeout=10, **kwargs)
    response.raise_for_status()
    return response.json()


def test_a_run_past_its_deadline_alerts_once_and_a_run_in_time_not_at_all(cluster, smtp_relay):
    began = time.monotonic()
    warehouse = get_engine(cluster.warehouse_url)
    seed_catalog(warehouse, _catalog(cluster, "slow", SLOW_DAY) + _catalog(cluster, "fast", FAST_DAY))
    metadata = get_engine(cluster.metadata_url)  # Airflow's own tables, read-only here

    # The slow run: Copyleaks scans its images, and every result webhook is lost.
    _emulator(cluster, "PATCH", "/admin/faults", json={"p_drop_webhook": 1})
    slow = _trigger(cluster, "slow", SLOW_DAY)
    wait_for(
        lambda: _emulator(cluster, "GET", "/admin/state")["webhooks_dropped"] >= IMAGES,
        "the slow run's webhooks dropped",
        timeout=120,
        interval=0.5,
    )
    _emulator(cluster, "PATCH", "/admin/faults", json={"p_drop_webhook": 0})

    # The fast run, its webhooks delivered: two deadlines (the minute; the far clock time) until it ends.
    fast = _trigger(cluster, "fast", FAST_DAY)
    for run_id in (slow, fast):
        by_minute, by_clock = _deadlines(metadata, run_id)
        queued = by_minute["queued_at"]
        assert by_minute["deadline_time"] == queued + MAX_RUN, by_minute
        assert by_clock["deadline_time"] == next_clock_time(queued, cluster.environment()[FINISH_BY_ENV])
    assert cluster.wait_for_run(DAG_ID, fast, timeout=120, poll=0.5) == "success"
    [fast_run] = _runs(metadata, fast)
    took = fast_run["end_date"] - fast_run["queued_at"]
    assert took < MAX_RUN, f"the fast run took {took}: longer than the deadline it should meet"
    # It ended in time: the scheduler deleted its deadlines, so no callback can ever run for it.
    assert _deadlines(metadata, fast) == []

    # The slow run: its minute passes while it waits; the scheduler queues the callback on the worker.
    [(recipients, message)] = smtp_relay.wait_for(1, timeout=MAX_RUN.total_seconds() + 60)
    alerted = time.monotonic()
    by_minute = wait_for(
        lambda: next((d for d in _deadlines(metadata, slow) if d["callback_state"] == "success"), None),
        "the slow run's deadline callback finished",
        timeout=60,
        interval=0.5,
    )
    assert by_minute["missed"] and by_minute["deadline_time"] == by_minute["queued_at"] + MAX_RUN
    # The callback ran once and is done (no retry); the far deadline is not due: one message, ever.
    assert len(smtp_relay.messages) == 1
    assert recipients == [RECIPIENT] and message["From"] == SENDER
    subject, body = str(message["Subject"]), _body(message)
    text_ = _text(body)
    assert subject.startswith(f"[image-audit] {DAG_ID} {slow}: not finished by ")
    assert subject.endswith(f"; {IMAGES} of {IMAGES} images still waiting")
    assert "(finish within 1 min of being queued)" in text_ and "its state when found late: running." in text_
    for line in (
        f"- images planned: {IMAGES}",
        f"- submitted: {IMAGES}",
        "- completed: 0 (failed 0, timed out 0, rejected 0)",
        f"- still waiting: {IMAGES} (0 to submit, {IMAGES} results to arrive)",
        "- expected finish: unknown",
        f"Every scan is submitted; {IMAGES} results are still to arrive by webhook, and none arrived in "
        "the last 5 minutes.",
    ):
        assert f"\n{line}\n" in text_, (line, text_)
    assert "- measured rate: " in text_ and "the account's budget: 10 requests/s" in text_
    link = f"{cluster.api_url}/dags/{DAG_ID}/runs/{quote(slow, safe='')}/plugin/audit-report"
    assert f'<a href="{link}">' in body
    assert fast not in message.as_string()
    # Still waiting when told, and still unfinished now: the alert was about a run that really was late.
    assert _runs(metadata, slow)[0]["state"] == "running"
    print(f"\ncluster test: {alerted - began:.0f} s from the first trigger to the alert; fast run {took}")


def _runs(metadata, run_id: str) -> list[dict]:
    query = text("SELECT state, queued_at, end_date FROM dag_run WHERE dag_id = :dag_id AND run_id = :run_id")
    with metadata.connect() as conn:
        return [dict(row._mapping) for row in conn.execute(query, {"dag_id": DAG_ID, "run_id": run_id})]
