"""The submit task's warehouse reads and writes ride out a short outage (found by the chaos suite's
warehouse cut: each in-flight submit task failed its try and waited 20-40 s for its retry), and still
fail, saying why, when the warehouse stays away."""

from __future__ import annotations

import threading
import time

import pytest
from sqlalchemy import select
from sqlalchemy.engine import make_url

from image_audit.warehouse import scans
from image_audit.warehouse.lifecycle import ScanState
from image_audit.warehouse.results import UNAVAILABLE_ERRORS
from image_audit.warehouse.schema import audit_scans
from tests.support.factories import insert_scans, new_scan
from tests.support.tcp_proxy import TcpProxy
from tests.support.warehouse import requires_postgres

pytestmark = [pytest.mark.postgres, requires_postgres]


@pytest.fixture
def warehouse_via_proxy(postgres_databases):
    """(direct engine, engine through a TCP proxy, the proxy) on a fresh migrated PostgreSQL warehouse."""
    from image_audit.warehouse.engine import get_engine
    from image_audit.warehouse.schema import migrate

    url = postgres_databases.create()
    try:
        direct = get_engine(url)
        migrate(direct)
        target = make_url(url)
        proxy = TcpProxy(target.host or "127.0.0.1", target.port or 5432).start()
        via = target.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
        yield direct, get_engine(via), proxy
        proxy.stop()
    finally:
        postgres_databases.drop(url)


def _pending_scan(engine, scan_id: str) -> None:
    insert_scans(engine, [new_scan(scan_id, ScanState.PENDING, batch_id="b1")])


def test_recording_answers_rides_out_a_short_warehouse_outage(warehouse_via_proxy):
    direct, via_proxy, proxy = warehouse_via_proxy
    _pending_scan(direct, "ia-outage-1")
    assert [s["scan_id"] for s in scans.load_unsent_scans(via_proxy, "b1")] == ["ia-outage-1"]  # pooled

    proxy.cut()
    threading.Timer(2.0, proxy.restore).start()  # the fault itself: a 2 s outage
    started = time.monotonic()
    scans.record_transitions(via_proxy, [("ia-outage-1", ScanState.SUBMITTED, None)])
    assert time.monotonic() - started >= 1.5, "the write waited for the warehouse"
    with direct.connect() as conn:
        state = conn.execute(select(audit_scans.c.state).where(audit_scans.c.scan_id == "ia-outage-1"))
        assert state.scalar_one() == ScanState.SUBMITTED.value
    assert scans.load_unsent_scans(via_proxy, "b1") == []


def test_a_warehouse_that_stays_away_still_fails_the_task(warehouse_via_proxy, monkeypatch):
    _, via_proxy, proxy = warehouse_via_proxy
    monkeypatch.setattr(scans, "OUTAGE_RETRY_SECONDS", 1.0)
    proxy.cut()
    started = time.monotonic()
    with pytest.raises(UNAVAILABLE_ERRORS):
        scans.record_submit_error(via_proxy, ["ia-outage-1"], "429 after retries")
    assert time.monotonic() - started < 10


def test_a_task_starting_during_an_outage_of_the_account_state_waits_for_it(warehouse_via_proxy, monkeypatch):
    """Opening the Copyleaks account state (the first time in a task's process) rides the outage out
    too, as each request's use of it does."""
    from copyleaks_provider.account.state import account_state
    from copyleaks_provider.settings import CopyleaksSettings

    _, via_proxy, proxy = warehouse_via_proxy
    url = via_proxy.url.set(drivername="postgresql").render_as_string(hide_password=False)
    monkeypatch.setenv("AIRFLOW_CONN_CHAOS_ACCOUNT_STATE", url)
    settings = CopyleaksSettings(
        email="demo@image-audit.dev", api_key="demo-api-key", account_state_conn_id="chaos_account_state"
    )
    proxy.cut()
    threading.Timer(2.0, proxy.restore).start()  # the fault itself: a 2 s outage
    started = time.monotonic()
    assert account_state(settings).token() is None  # opened (its tables made) once the database is back
    assert time.monotonic() - started >= 1.5
