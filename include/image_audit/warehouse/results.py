"""Storing Copyleaks callbacks: each result exactly once, the scan's state in the same transaction.

Callbacks are group-committed (:class:`CallbackWriter`): one transaction per batch locks its scan rows in
scan id order (two batches never deadlock) and, on PostgreSQL, queues one ``pg_notify`` per run touched
(delivered on commit, so a waiting trigger never wakes before the rows are visible). Every distinct failed
callback of a known scan (an error webhook, or an authentic body the receiver does not recognise) is kept
verbatim in ``audit_failed_callbacks``, whatever the scan's state; one that cannot be kept as JSON, or
whose values the database refuses (:func:`is_data_error`), is kept as ``{"base64": <its bytes>}``. Only an
unavailable warehouse makes the receiver answer 503.

Ordering rules (callbacks may be duplicated, late or out of order, even within one batch):
- a result always wins: it completes the scan whatever its state (``timed_out``, ``failed``, ...);
- the first result is kept; a later one for the same scan is a duplicate and changes nothing;
- a failed callback fails a scan (``last_error`` = its reason) only while the scan has no result and
  is neither ``failed`` nor ``rejected`` (only a result leaves a terminal state); otherwise it changes
  no scan (outcome ``duplicate``), and a body already kept adds no row either.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, Engine, bindparam, func, select, update
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from copyleaks_provider.models import WebhookBody
from copyleaks_provider.webhooks.callbacks import Callback, CallbackOutcome
from image_audit.warehouse.lifecycle import ScanState
from image_audit.warehouse.schema import audit_failed_callbacks, audit_results, audit_scans

log = logging.getLogger(__name__)

#: PostgreSQL channel of scan state changes; payload ``{"dag_id", "run_id"}``: a run whose scans changed.
NOTIFY_CHANNEL = "image_audit_scans"
#: Errors that say the warehouse is away (not that a callback is bad): the whole batch is answered 503.
UNAVAILABLE_ERRORS = (
    sa_exc.OperationalError,
    sa_exc.InterfaceError,
    sa_exc.DisconnectionError,
    sa_exc.TimeoutError,
    OSError,
)


async def store_callbacks(
    engine: Engine | AsyncEngine | AsyncConnection, callbacks: Sequence[Callback]
) -> list[CallbackOutcome]:
    """Store ``callbacks`` in one transaction, durable (committed) when this returns; idempotent.

    ``engine``: an engine (one transaction is opened and committed here; a sync one's in a worker
    thread) or an async connection whose open transaction the caller commits. Returns one outcome per
    callback, in order.
    """
    if isinstance(engine, Engine):
        return await asyncio.to_thread(_store_committed, engine, callbacks)
    if isinstance(engine, AsyncConnection):
        return await engine.run_sync(_store, callbacks)
    async with engine.begin() as conn:
        return await conn.run_sync(_store, callbacks)


def _store_committed(engine: Engine, callbacks: Sequence[Callback]) -> list[CallbackOutcome]:
    with engine.begin() as conn:
        return _store(conn, callbacks)


def _store(conn: Connection, callbacks: Sequence[Callback]) -> list[CallbackOutcome]:
    """The batch's statements, as sync code: run in a thread on a sync engine, or through ``run_sync``
    on an async one."""
    now = datetime.now(UTC)
    postgres = conn.dialect.name == "postgresql"
    scan_ids = sorted({c.scan_id for c in callbacks})
    query = (
        select(audit_scans.c.scan_id, audit_scans.c.state, audit_scans.c.dag_id, audit_scans.c.run_id)
        .where(audit_scans.c.scan_id.in_(scan_ids))
        .order_by(audit_scans.c.scan_id)
    )
    if postgres:  # SQLite: the receiver's engine opens every transaction with BEGIN IMMEDIATE
        query = query.with_for_update()
    scans = {row.scan_id: row for row in conn.execute(query)}
    state = {scan_id: row.state for scan_id, row in scans.items()}

    outcomes: list[CallbackOutcome | None] = []
    results: dict[str, dict[str, Any]] = {}  # the first result of each scan in this batch
    failures: dict[str, str] = {}  # scan id -> the reason it failed (its last_error)
    kept: dict[tuple[str, str], dict[str, Any]] = {}  # the failed callbacks rows, one per scan and body
    for callback in callbacks:
        scan_id = callback.scan_id
        reason = callback.failure_reason
        if scan_id not in scans:
            outcomes.append(CallbackOutcome.UNKNOWN_SCAN)
        elif reason is not None:
            row = _failed_callback_values(callback, reason, now)
            kept.setdefault((scan_id, row["body_sha256"]), row)
            if state[scan_id] in (ScanState.COMPLETED, ScanState.FAILED, ScanState.REJECTED):
                outcomes.append(CallbackOutcome.DUPLICATE)
            else:
                failures[scan_id] = reason
                state[scan_id] = ScanState.FAILED
                outcomes.append(
                    CallbackOutcome.FAILED_RECORDED
                    if callback.body is not None
                    else CallbackOutcome.UNRECOGNISED_RECORDED
                )
        elif scan_id in results:
            outcomes.append(CallbackOutcome.DUPLICATE)
        else:
            results[scan_id] = _result_values(scan_id, callback.body, callback.raw, now)
            state[scan_id] = ScanState.COMPLETED  # a stored result means completed: later errors are late
            outcomes.append(None)  # stored or duplicate: the insert tells

    if kept:
        conn.execute(_INSERT_FAILED_CALLBACKS[postgres], list(kept.values()))
    if failures:
        conn.execute(
            update(audit_scans)
            .where(audit_scans.c.scan_id == bindparam("failed_scan_id"))
            .values(state=ScanState.FAILED.value, completed_at=now, updated_at=now),
            [{"failed_scan_id": scan_id, "last_error": message} for scan_id, message in failures.items()],
        )
    inserted: set[str] = set()
    if results:
        # executemany: one cached statement, sent as multi-row INSERTs ("insertmanyvalues").
        inserted = set(conn.execute(_INSERT_RESULTS[postgres], list(results.values())).scalars())
        if inserted:
            conn.execute(
                update(audit_scans)
                .where(audit_scans.c.scan_id.in_(sorted(inserted)))
                .values(state=ScanState.COMPLETED.value, completed_at=now, updated_at=now, last_error=None)
            )
    if postgres:
        changed = {*failures, *inserted}
        for dag_id, run_id in sorted({(scans[s].dag_id, scans[s].run_id) for s in changed}):
            payload = json.dumps({"dag_id": dag_id, "run_id": run_id})
            conn.execute(select(func.pg_notify(NOTIFY_CHANNEL, payload)))

    return [
        outcome
        if outcome is not None
        else (CallbackOutcome.STORED if callback.scan_id in inserted else CallbackOutcome.DUPLICATE)
        for callback, outcome in zip(callbacks, outcomes, strict=True)
    ]


class CallbackWriter:
    """Group commit for the receiver: each request awaits its callback's outcome, durable on return.

    ``writers`` tasks each take every callback waiting in the queue (up to ``max_batch``) into one
    transaction, so under load a commit carries many callbacks and at rest each goes alone at once.
    A batch that fails because the warehouse is away fails all its callbacks (the receiver answers 503
    and Copyleaks retries); one that fails for any other reason is retried callback by callback, so a
    bad callback fails alone.
    """

    def __init__(self, engine: Engine | AsyncEngine, *, writers: int, max_batch: int = 500) -> None:
        self._engine = engine
        self._writers = writers
        self._max_batch = max_batch
        self._queue: asyncio.Queue[tuple[Callback, asyncio.Future]] = asyncio.Queue()
        self._tasks: list[asyncio.Task] = []

    async def store(self, callback: Callback) -> CallbackOutcome:
        if not self._tasks:
            self._tasks = [asyncio.create_task(self._write_batches()) for _ in range(self._writers)]
        future = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((callback, future))
        return await future

    async def close(self) -> None:
        """Stop the writers; callbacks still queued get an error (their senders retry)."""
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        while not self._queue.empty():
            _, future = self._queue.get_nowait()
            if not future.done():
                future.set_exception(ConnectionAbortedError("the receiver is shutting down"))

    async def _write_batches(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while len(batch) < self._max_batch and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            try:
                await self._write(batch)
            except Exception as exc:  # never a request left waiting, nor a writer gone
                for _, future in batch:
                    _settle(future, exception=exc)

    async def _write(self, batch: list[tuple[Callback, asyncio.Future]]) -> None:
        try:
            outcomes = await store_callbacks(self._engine, [callback for callback, _ in batch])
        except Exception as exc:
            if isinstance(exc, UNAVAILABLE_ERRORS):  # every callback of the batch: 503, sent again later
                for _, future in batch:
                    _settle(future, exception=exc)
                return
            if len(batch) > 1:  # a bad callback fails alone
                log.info(
                    "A batch of %d callbacks failed (%s); storing them one by one",
                    len(batch),
                    type(exc).__name__,
                )
                for item in batch:
                    await self._write([item])
                return
            [(callback, future)] = batch
            if is_data_error(exc) and not callback.unreadable:
                reason = type(exc).__name__
                log.warning("The warehouse refused a callback's values (%s); keeping its raw bytes", reason)
                await self._write([(as_unreadable(callback, exc), future)])
                return
            _settle(future, exception=exc)
            return
        for (_, future), outcome in zip(batch, outcomes, strict=True):
            _settle(future, result=outcome)


def _settle(future: asyncio.Future, *, result: Any = None, exception: BaseException | None = None) -> None:
    """Answer a waiting request, unless it went away (the write stands: callbacks are idempotent)."""
    if future.done():
        return
    if exception is not None:
        future.set_exception(exception)
    else:
        future.set_result(result)


def is_data_error(exc: BaseException) -> bool:
    """True when the warehouse (or the driver, serialising) refused a statement's values, as opposed to
    being unavailable: storing the same values again would fail again."""
    if isinstance(exc, sa_exc.DataError):
        return True
    if isinstance(exc, sa_exc.DBAPIError):  # the database answered, about something else
        return False
    if isinstance(exc, sa_exc.StatementError):  # raised before the database saw it: a value
        return True
    return isinstance(exc, ValueError | TypeError | ArithmeticError | RecursionError)


def as_unreadable(callback: Callback, exc: BaseException) -> Callback:
    """``callback`` to be kept as its raw bytes, the warehouse having refused its values."""
    raw_bytes = callback.raw_bytes
    problem = f"the warehouse refused its values ({type(exc).__name__})"
    if raw_bytes is None:  # built in process (tests, notebooks): its JSON as Python writes it
        try:
            raw_bytes = json.dumps(callback.raw, allow_nan=True, default=str).encode()
        except (ValueError, RecursionError):
            raw_bytes, problem = b"", problem + "; its body could not be serialised either"
    return Callback.of_unreadable(callback.scan_id, raw_bytes, problem)


def body_sha256(raw: Any) -> str:
    """The digest of a body's canonical JSON (sorted keys, no spaces, ASCII): the same body sent twice,
    however it was spaced, has the same digest. ``RecursionError`` for a body nested too deeply."""
    canonical = json.dumps(raw, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=True)
    return hashlib.sha256(canonical.encode("ascii")).hexdigest()


def _failed_callback_values(callback: Callback, reason: str, now: datetime) -> dict[str, Any]:
    if callback.unreadable:
        digest = hashlib.sha256(callback.raw_bytes).hexdigest()
        kind, raw = "unreadable", {"base64": base64.b64encode(callback.raw_bytes).decode("ascii")}
    else:
        digest, raw = body_sha256(callback.raw), callback.raw
        kind = "error" if callback.body is not None else "unrecognised"
    return {
        "scan_id": callback.scan_id,
        "body_sha256": digest,
        "kind": kind,
        "reason": reason,
        "received_at": now,
        "raw_body": raw,
    }


def _result_values(scan_id: str, body: WebhookBody, raw: dict[str, Any], now: datetime) -> dict[str, Any]:
    """The results row, from a body already validated as a detection (no second validation)."""
    shape, metadata, document = body.image_info.shape, body.image_info.metadata, body.scanned_document
    return {
        "scan_id": scan_id,
        "ai": body.summary.ai,
        "human": body.summary.human,
        "model": body.model,
        "width": shape.width,
        "height": shape.height,
        "mask_starts": body.result.starts,
        "mask_lengths": body.result.lengths,
        "mask_pixels": sum(body.result.lengths),  # the report's mask area, without reading the mask
        "image_metadata": metadata.model_dump(by_alias=True, exclude_none=True) if metadata else None,
        "actual_credits": document.actual_credits if document is not None else None,
        "expected_credits": document.expected_credits if document is not None else None,
        "developer_payload": body.developer_payload,
        "received_at": now,
        "raw_body": raw,
    }


#: The results insert of each dialect (keyed by "is PostgreSQL"): a duplicate result is skipped, and
#: the scan ids actually inserted come back.
_INSERT_RESULTS = {
    postgres: dialect.insert(audit_results)
    .on_conflict_do_nothing(index_elements=["scan_id"])
    .returning(audit_results.c.scan_id)
    for postgres, dialect in ((True, postgresql), (False, sqlite))
}
#: The failed callbacks insert of each dialect: a body already kept for the scan is skipped.
_INSERT_FAILED_CALLBACKS = {
    postgres: dialect.insert(audit_failed_callbacks).on_conflict_do_nothing(
        index_elements=["scan_id", "body_sha256"]
    )
    for postgres, dialect in ((True, postgresql), (False, sqlite))
}
