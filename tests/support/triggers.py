"""Scans of runs for the waiting trigger and the wait operator, and a watch on the trigger's polls."""

from __future__ import annotations

import asyncio
import hashlib
import json
import threading
from collections.abc import Callable
from datetime import UTC, datetime

import pytest
from sqlalchemy import text, update

import image_audit.triggers.scan_results as trigger_module
from image_audit.warehouse.engine import get_engine
from image_audit.warehouse.lifecycle import ScanState
from image_audit.warehouse.results import NOTIFY_CHANNEL
from image_audit.warehouse.schema import audit_scans
from tests.support.factories import DAG_ID, insert_scans, new_scan


def seed(url: str, run_id: str, states: dict[ScanState, int], dag_id: str = DAG_ID) -> list[str]:
    """Insert scans of the run in the given states; returns their ids."""
    run_hash = hashlib.sha256(f"{dag_id}/{run_id}".encode()).hexdigest()[:16]
    rows = [
        new_scan(
            f"{run_hash}-{state.value}-{i}",
            state,
            run_id=run_id,
            dag_id=dag_id,
            image_id=f"image-{run_id}-{state.value}-{i}",
        )
        for state, n in states.items()
        for i in range(n)
    ]
    return insert_scans(url, rows)


def complete(url: str, run_id: str, *, notify: bool = False, dag_id: str = DAG_ID) -> None:
    """What the receiver does for every callback of the run: complete the scans (and NOTIFY)."""
    with get_engine(url).begin() as conn:
        conn.execute(
            update(audit_scans)
            .where(audit_scans.c.dag_id == dag_id, audit_scans.c.run_id == run_id)
            .where(audit_scans.c.state == ScanState.SUBMITTED.value)
            .values(state=ScanState.COMPLETED.value, updated_at=datetime.now(UTC))
        )
        if notify:
            payload = json.dumps({"dag_id": dag_id, "run_id": run_id})
            conn.execute(text("SELECT pg_notify(:c, :p)"), {"c": NOTIFY_CHANNEL, "p": payload})


class PollWatch:
    """The trigger module's real poll query, watched: every snapshot it returned, in order.

    Waits on it end at an event (polls that found what they were waited for), or fail the test with
    what the polls did find. A standalone wait judges each snapshot before its loop polls again; on a
    shared stream the snapshot reaches the waits' queues before the next poll, so once ``n + 1`` polls
    are seen, every wait has judged at least ``n`` of them.
    """

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.snapshots: list[dict[tuple[str, str], int]] = []
        self._polled = threading.Condition()  # the trigger's loop may run in another thread (dag.test)
        self._async_waiters: set[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = set()
        poll = trigger_module.waiting_counts_by_run

        async def watched_poll(engine, runs=None):
            snapshot = await poll(engine, runs)
            with self._polled:
                self.snapshots.append(snapshot)
            self.wake()
            return snapshot

        monkeypatch.setattr(trigger_module, "waiting_counts_by_run", watched_poll)

    def finding(self, run_id: str, waiting: int, *, dag_id: str = DAG_ID, since: int = 0) -> int:
        """Polls (from the ``since``-th on) that found exactly ``waiting`` scans of the run awaiting."""
        with self._polled:
            return sum(1 for snapshot in self.snapshots[since:] if snapshot.get((dag_id, run_id)) == waiting)

    def wake(self) -> None:
        """Have every wait check its condition again (after a poll, or when something else changed)."""
        with self._polled:
            self._polled.notify_all()
            waiters = list(self._async_waiters)
        for loop, event in waiters:
            loop.call_soon_threadsafe(event.set)

    def _not_seen(self, what: str, timeout: float) -> AssertionError:
        found = f"{len(self.snapshots)} polls, the last ones found {self.snapshots[-3:]}"
        return AssertionError(f"not seen within {timeout} s: {what} ({found})")

    def wait_for(self, what: str, seen: Callable[[], bool], timeout: float = 10) -> None:
        """Block until ``seen()`` (checked after every poll), or fail with ``what`` was not seen."""
        with self._polled:
            if not self._polled.wait_for(seen, timeout):
                raise self._not_seen(what, timeout)

    async def until(
        self, what: str, seen: Callable[[], bool], *, unless: list[asyncio.Task], timeout: float = 10
    ) -> None:
        """Await ``seen()`` (checked after every poll); fail as soon as one of the waits ``unless`` ends."""
        polled = asyncio.Event()
        waiter = (asyncio.get_running_loop(), polled)
        with self._polled:
            self._async_waiters.add(waiter)
        try:
            async with asyncio.timeout(timeout):
                while True:
                    polled.clear()
                    if seen():
                        return
                    woken = asyncio.ensure_future(polled.wait())
                    try:
                        await asyncio.wait([woken, *unless], return_when=asyncio.FIRST_COMPLETED)
                    finally:
                        woken.cancel()
                    for task in unless:
                        if task.done():
                            outcome = "cancelled" if task.cancelled() else task.exception() or task.result()
                            raise AssertionError(f"a wait ended ({outcome!r}) before {what}")
        except TimeoutError:
            raise self._not_seen(what, timeout) from None
        finally:
            with self._polled:
                self._async_waiters.discard(waiter)
