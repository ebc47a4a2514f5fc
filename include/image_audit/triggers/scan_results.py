"""``ScanResultsTrigger``: wait in the triggerer until a run's scans have all called back, or its deadline.

Every trigger on the same warehouse and poll interval shares one poll loop (Airflow 3.3's shared streams)
and, on PostgreSQL, one ``LISTEN image_audit_scans`` connection, whose notifications re-poll just the
notified runs. A poll counts the waiting scans of exactly the runs waited on in this triggerer
(``_WatchedRuns``); a run missing from its snapshot is "not looked at yet", never "finished", so a
trigger that joins between two polls cannot finish early.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import Counter
from collections.abc import AsyncIterator, Hashable
from contextlib import aclosing
from datetime import UTC, datetime
from typing import Any

from airflow.triggers.base import BaseEventTrigger, TriggerEvent
from sqlalchemy import exc as sa_exc
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from image_audit.config import DEFAULT_WAREHOUSE_CONN_ID, warehouse_url_async
from image_audit.warehouse.engine import create_async_warehouse_engine, is_postgres
from image_audit.warehouse.progress import RunKey, waiting_counts_by_run
from image_audit.warehouse.results import NOTIFY_CHANNEL

log = logging.getLogger(__name__)

STREAM_NAME = "image_audit.scan_progress"
#: After a notification, wait this long for more before polling (callbacks arrive in bursts).
NOTIFY_DEBOUNCE_SECONDS = 0.2
#: Notification-driven polls are at least this many times their own duration apart, so a flood of
#: callbacks for large runs costs the database at most ~1/(1+factor) of one connection.
NOTIFY_POLL_COST_FACTOR = 4
#: Errors a warehouse outage or a lock produces: the poll logs them and tries again, until the deadline.
TRANSIENT_ERRORS = (
    sa_exc.OperationalError,
    sa_exc.InterfaceError,
    sa_exc.DisconnectionError,
    sa_exc.TimeoutError,
    OSError,
    TimeoutError,
)
#: Log a waiting run's progress at most this often (and when it changes).
PROGRESS_LOG_SECONDS = 60

Snapshot = dict[RunKey, int]  # scans awaiting their callback, for each run the poll looked at


class ScanResultsTrigger(BaseEventTrigger):
    """Fire when no scan of the run awaits its Copyleaks callback any more, or at ``deadline``.

    Events: ``{"status": "done", "waiting": 0}``; ``{"status": "timeout", "waiting": n}`` (``n`` as
    last seen, ``None`` if the warehouse never answered); ``{"status": "error", "message": ...}``.

    :param dag_id: the run's DAG id.
    :param run_id: the run's id.
    :param deadline: when to stop waiting (timezone-aware; an ISO 8601 string is accepted too).
    :param poll_interval: seconds between polls of the warehouse (notifications poll sooner).
    :param warehouse_conn_id: the warehouse connection (looked up in the triggerer, never serialized).
    """

    def __init__(
        self,
        dag_id: str,
        run_id: str,
        deadline: datetime | str,
        poll_interval: float = 10.0,
        warehouse_conn_id: str = DEFAULT_WAREHOUSE_CONN_ID,
    ) -> None:
        super().__init__()
        self.warehouse_conn_id = warehouse_conn_id
        self.dag_id = dag_id
        self.run_id = run_id
        self.deadline = _aware(datetime.fromisoformat(deadline) if isinstance(deadline, str) else deadline)
        self.poll_interval = float(poll_interval)
        if self.poll_interval <= 0:
            raise ValueError(f"poll_interval must be positive, got {poll_interval!r}")

    def serialize(self) -> tuple[str, dict[str, Any]]:
        # The connection id, not its URL (which may hold a password): the triggerer looks it up.
        return (
            "image_audit.triggers.scan_results.ScanResultsTrigger",
            {
                "dag_id": self.dag_id,
                "run_id": self.run_id,
                "deadline": self.deadline,
                "poll_interval": self.poll_interval,
                "warehouse_conn_id": self.warehouse_conn_id,
            },
        )

    def shared_stream_key(self) -> Hashable:
        """One stream per warehouse connection and poll interval (the stream uses only these two)."""
        return (STREAM_NAME, self.warehouse_conn_id, self.poll_interval)

    @classmethod
    async def open_shared_stream(cls, kwargs: dict[str, Any]) -> AsyncIterator[Snapshot]:
        """Yield a :data:`Snapshot` after every poll, forever (or raise)."""
        watched = _WatchedRuns.for_stream(cls(**kwargs).shared_stream_key())
        trigger = cls(**kwargs)
        polls = _poll_progress(watched, trigger.poll_interval, trigger.warehouse_conn_id)
        async with aclosing(polls) as snapshots:
            async for snapshot in snapshots:
                yield snapshot

    async def filter_shared_stream(self, shared_stream: AsyncIterator[Any]) -> AsyncIterator[TriggerEvent]:
        yield await self._wait(shared_stream, _WatchedRuns.for_stream(self.shared_stream_key()))

    async def run(self) -> AsyncIterator[TriggerEvent]:
        """Standalone mode (``dag.test``, or a triggerer without shared streams): the same poll and wait.

        The poll (and its connections) is closed before the one event is yielded: ``dag.test`` takes
        that event and never resumes this generator.
        """
        watched = _WatchedRuns()  # private: this poll serves this trigger only
        polls = _poll_progress(watched, self.poll_interval, self.warehouse_conn_id)
        async with aclosing(polls) as snapshots:
            event = await self._wait(snapshots, watched)
        yield event

    async def _wait(self, snapshots: AsyncIterator[Snapshot], watched: _WatchedRuns) -> TriggerEvent:
        """Read snapshots until this run has nothing waiting, the deadline passes, or the poll fails."""
        run = (self.dag_id, self.run_id)
        last_seen: int | None = None
        logged_at = 0.0
        remaining = (self.deadline - datetime.now(UTC)).total_seconds()
        if remaining <= 0:  # e.g. the triggerer was down past the deadline: no need to poll
            return TriggerEvent({"status": "timeout", "waiting": None})
        watched.add(run)
        try:
            async with asyncio.timeout(remaining) as timer:
                async for snapshot in snapshots:
                    if run not in snapshot:
                        continue
                    if snapshot[run] == 0:
                        return TriggerEvent({"status": "done", "waiting": 0})
                    now = asyncio.get_running_loop().time()
                    if snapshot[run] != last_seen and now - logged_at >= PROGRESS_LOG_SECONDS:
                        self.log.info("%d scans of %s await their Copyleaks callback", snapshot[run], run)
                        logged_at = now
                    last_seen = snapshot[run]
            raise RuntimeError("the scan progress stream ended")
        except TimeoutError:
            if not timer.expired():
                return _error_event(TimeoutError("reading scan progress timed out"))
            return TriggerEvent({"status": "timeout", "waiting": last_seen})
        except Exception as exc:  # the poll failed: tell the task, which fails (and retries) with it
            return _error_event(exc)
        finally:
            watched.remove(run)


def _error_event(exc: BaseException) -> TriggerEvent:
    log.exception("Waiting for Copyleaks results failed")
    return TriggerEvent({"status": "error", "message": f"{type(exc).__name__}: {exc}"[:500]})


def _aware(moment: datetime) -> datetime:
    if moment.tzinfo is None:
        raise ValueError("deadline must be timezone-aware")
    return moment


class _WatchedRuns:
    """The runs a poll loop serves: those its triggers wait on, in this triggerer process.

    A shared stream is opened with one trigger's kwargs only, so its triggers tell it their runs through
    this registry (one per stream key; the triggerer runs streams and triggers on one event loop). A
    trigger adds its run when it starts waiting and removes it when it stops; a run added or notified
    since the last poll is "dirty" and is polled soon, without waiting for the poll interval.
    """

    _by_stream: dict[Hashable, _WatchedRuns] = {}

    def __init__(self) -> None:
        self._runs: Counter[RunKey] = Counter()
        self._dirty: set[RunKey] = set()
        self._wake: asyncio.Event | None = None
        self._stream_key: Hashable | None = None

    @classmethod
    def for_stream(cls, key: Hashable) -> _WatchedRuns:
        if key not in cls._by_stream:
            cls._by_stream[key] = cls()
            cls._by_stream[key]._stream_key = key
        return cls._by_stream[key]

    def add(self, run: RunKey) -> None:
        self._runs[run] += 1
        self.touch(run)

    def remove(self, run: RunKey) -> None:
        self._runs[run] -= 1
        if self._runs[run] <= 0:
            del self._runs[run]
            self._dirty.discard(run)
        self._forget_if_unused()

    def touch(self, run: RunKey | None = None) -> None:
        """Poll ``run`` (``None``: every run) soon."""
        self._dirty.update(self._runs if run is None else {run} & self._runs.keys())
        if self._dirty and self._wake is not None:
            self._wake.set()

    def attach(self) -> asyncio.Event:
        """The poll loop starts: the event it sleeps on, set whenever a run needs polling."""
        self._wake = asyncio.Event()
        return self._wake

    def detach(self) -> None:
        self._wake = None
        self._forget_if_unused()

    def take(self, *, everything: bool) -> list[RunKey]:
        """The runs to poll now (all, or just the dirty ones); none is dirty afterwards."""
        runs = list(self._runs) if everything else [r for r in self._dirty if r in self._runs]
        self._dirty.clear()
        return runs

    def _forget_if_unused(self) -> None:
        unused = not self._runs and self._wake is None
        if unused and self._stream_key is not None and self._by_stream.get(self._stream_key) is self:
            del self._by_stream[self._stream_key]


async def _poll_progress(
    watched: _WatchedRuns, poll_interval: float, warehouse_conn_id: str
) -> AsyncIterator[Snapshot]:
    """Poll the warehouse for ``watched``'s runs every ``poll_interval`` s, sooner when woken; forever."""
    url = await warehouse_url_async(warehouse_conn_id)
    engine = create_async_warehouse_engine(url)
    notifications = _Notifications(engine, watched) if is_postgres(url) else None
    wake = watched.attach()
    loop = asyncio.get_running_loop()
    everything = True
    try:
        while True:
            if notifications is not None and await notifications.listen():
                everything = True  # (re)connected: notifications may have been missed meanwhile
            wake.clear()
            runs = watched.take(everything=everything)
            cost, failed = 0.0, False
            if runs:
                started = loop.time()
                try:
                    snapshot = await waiting_counts_by_run(engine, runs)
                except TRANSIENT_ERRORS as exc:  # a warehouse blip must not fail every waiting run
                    log.warning("Could not read scan progress (%s); retrying in %.0f s", exc, poll_interval)
                    failed = True
                else:
                    yield snapshot
                cost = loop.time() - started
            if failed:
                await asyncio.sleep(poll_interval)
                everything = True
            elif await _woken_within(wake, poll_interval):
                await asyncio.sleep(max(NOTIFY_DEBOUNCE_SECONDS, NOTIFY_POLL_COST_FACTOR * cost))
                everything = False
            else:
                everything = True
    finally:
        watched.detach()
        if notifications is not None:
            await notifications.close()
        await engine.dispose()


async def _woken_within(event: asyncio.Event, timeout: float) -> bool:
    """Whether ``event`` was set within ``timeout`` seconds."""
    try:
        await asyncio.wait_for(event.wait(), timeout)
    except TimeoutError:
        return False
    return True


class _Notifications:
    """``LISTEN image_audit_scans`` on a dedicated connection; a notification marks its run for a poll.

    Best effort: polling goes on without it. Losing the connection wakes the poll loop, which listens
    again (retrying at each poll while the database is away) and polls every run.
    """

    def __init__(self, engine: AsyncEngine, watched: _WatchedRuns) -> None:
        self._engine = engine
        self._watched = watched
        self._conn: AsyncConnection | None = None
        self._driver_conn = None  # the asyncpg connection
        self._failing = False

    async def listen(self) -> bool:
        """Make sure we are listening; True when a new LISTEN started (first time or after a loss)."""
        if self._driver_conn is not None and not self._driver_conn.is_closed():
            return False
        await self.close()
        try:
            self._conn = await self._engine.connect()
            self._driver_conn = (await self._conn.get_raw_connection()).driver_connection
            await self._driver_conn.add_listener(NOTIFY_CHANNEL, self._on_notify)
            self._driver_conn.add_termination_listener(self._on_lost)
        except Exception as exc:  # best effort: whatever LISTEN raises, polling goes on
            if not self._failing:
                log.warning("LISTEN %s failed (%s); polling only until it works", NOTIFY_CHANNEL, exc)
            self._failing = True
            await self.close()
            return False
        if self._failing:
            log.info("LISTEN %s works again", NOTIFY_CHANNEL)
        self._failing = False
        return True

    def _on_notify(self, _conn, _pid, _channel, payload: str) -> None:
        try:
            scan = json.loads(payload)
            run = (scan["dag_id"], scan["run_id"])
        except (ValueError, TypeError, KeyError):
            run = None  # not our payload shape: poll every run rather than miss one
        self._watched.touch(run)

    def _on_lost(self, _conn) -> None:
        # Listen again and poll every run at once: notifications may be lost until we do.
        self._watched.touch()

    async def close(self) -> None:
        conn, driver_conn = self._conn, self._driver_conn
        self._conn = self._driver_conn = None
        if conn is None:
            return
        try:
            if driver_conn is not None and not driver_conn.is_closed():
                await driver_conn.remove_listener(NOTIFY_CHANNEL, self._on_notify)
                await conn.close()
            else:
                await conn.invalidate()
        except Exception as exc:  # closing a broken connection must not hide why we are closing
            log.debug("Closing the LISTEN connection failed: %s", exc)
