"""Group-committed callback storage on SQLite and PostgreSQL: the ordering rules inside one batch,
and the writer's fallback that lets a bad callback fail alone."""

from __future__ import annotations

import asyncio

from sqlalchemy import select

import image_audit.warehouse.results as results_module
from copyleaks_provider.models import WebhookBody
from image_audit.warehouse.engine import create_async_warehouse_engine, get_engine
from image_audit.warehouse.results import Callback, CallbackOutcome, CallbackWriter, store_callbacks
from image_audit.warehouse.schema import ScanState, audit_results
from tests.test_receiver import error_body, result_body, result_count, scan_row, seed_scan


def callback(scan_id: str, body: dict) -> Callback:
    return Callback(scan_id, WebhookBody.model_validate(body), body)


def store(url: str, callbacks: list[Callback]) -> list[CallbackOutcome]:
    async def go() -> list[CallbackOutcome]:
        engine = create_async_warehouse_engine(url, write_transactions=True)
        try:
            return await store_callbacks(engine, callbacks)
        finally:
            await engine.dispose()

    return asyncio.run(go())


def test_one_batch_applies_the_ordering_rules_callback_by_callback(warehouse_url):
    for scan_id in ("twice", "error-then-result", "result-then-error", "error-twice", "already-failed"):
        seed_scan(warehouse_url, scan_id)
    seed_scan(warehouse_url, "timed-out", ScanState.TIMED_OUT)
    first_twice = result_body("twice", ai_pixels=4)
    outcomes = store(
        warehouse_url,
        [
            callback("twice", first_twice),
            callback("twice", result_body("twice", ai_pixels=30)),
            callback("error-then-result", error_body("error-then-result")),
            callback("error-then-result", result_body("error-then-result")),
            callback("result-then-error", result_body("result-then-error")),
            callback("result-then-error", error_body("result-then-error")),
            callback("error-twice", error_body("error-twice")),
            callback("error-twice", error_body("error-twice")),
            callback("timed-out", result_body("timed-out")),
            callback("nobody", result_body("nobody")),
        ],
    )
    S, F, D, U = (CallbackOutcome.STORED, CallbackOutcome.FAILED_RECORDED, CallbackOutcome.DUPLICATE,
                  CallbackOutcome.UNKNOWN_SCAN)  # fmt: skip
    assert outcomes == [S, D, F, S, S, D, F, D, S, U]
    states = {
        s: scan_row(warehouse_url, s)["state"] for s in ("twice", "error-then-result", "result-then-error")
    }
    assert states == dict.fromkeys(states, "completed")
    assert scan_row(warehouse_url, "error-twice")["state"] == "failed"
    assert scan_row(warehouse_url, "timed-out")["state"] == "completed"  # a late result still counts
    assert scan_row(warehouse_url, "error-then-result")["last_error"] is None
    assert result_count(warehouse_url) == 4
    with get_engine(warehouse_url).connect() as conn:
        kept = conn.execute(select(audit_results.c.ai).where(audit_results.c.scan_id == "twice")).scalar_one()
    assert kept == first_twice["summary"]["ai"]  # the first result is kept

    # The same batch again: every callback is now a duplicate, nothing changes.
    again = store(
        warehouse_url, [callback("twice", first_twice), callback("result-then-error", error_body("x"))]
    )
    assert again == [D, D] and result_count(warehouse_url) == 4


def test_the_writer_groups_concurrent_callbacks_and_a_bad_one_fails_alone(warehouse_url, monkeypatch):
    ids = [f"w-{i:03d}" for i in range(60)]
    for scan_id in ids:
        seed_scan(warehouse_url, scan_id)
    nested: dict = {}
    deepest = nested
    for _ in range(5_000):  # parsed fine as a dict here, but too deep to serialise into raw_body
        deepest["x"] = {}
        deepest = deepest["x"]
    poisoned = Callback(
        ids[0], WebhookBody.model_validate(result_body(ids[0])), {**result_body(ids[0]), "n": nested}
    )

    batches: list[int] = []

    async def counting_store(target, callbacks):
        batches.append(len(callbacks))
        return await store_callbacks(target, callbacks)

    monkeypatch.setattr(results_module, "store_callbacks", counting_store)

    async def go():
        engine = create_async_warehouse_engine(warehouse_url, write_transactions=True)
        writer = CallbackWriter(engine, writers=1, max_batch=100)
        try:
            good = [writer.store(callback(s, result_body(s))) for s in ids[1:]]
            return await asyncio.gather(writer.store(poisoned), *good, return_exceptions=True)
        finally:
            await writer.close()
            await engine.dispose()

    answers = asyncio.run(go())
    assert isinstance(answers[0], Exception)
    assert answers[1:] == [CallbackOutcome.STORED] * (len(ids) - 1)
    assert max(batches) > 1, "concurrent callbacks share a transaction"
    assert scan_row(warehouse_url, ids[0])["state"] == "submitted"  # the bad one wrote nothing
    assert result_count(warehouse_url) == len(ids) - 1
