"""Storing callbacks (``image_audit.warehouse.results``), group-committed, on SQLite and PostgreSQL: the
ordering rules inside one batch, failed callbacks kept once each, the new table reaching an existing
warehouse, and the writer's fallback that lets a bad callback fail alone."""

from __future__ import annotations

import asyncio
import base64
import json

import numpy as np
from sqlalchemy import inspect, select, text

import image_audit.warehouse.results as results_module
from copyleaks_provider.models import ScannedDocument, WebhookBody, decode_rle_mask, encode_rle_mask
from copyleaks_provider.webhooks.callbacks import UNRECOGNISED_REASON, Callback, CallbackOutcome
from image_audit.warehouse.engine import create_async_warehouse_engine, get_engine
from image_audit.warehouse.lifecycle import ScanState
from image_audit.warehouse.migrations import FIRST_REVISION, VERSION_TABLE, downgrade, head_revision
from image_audit.warehouse.results import CallbackWriter, store_callbacks
from image_audit.warehouse.schema import audit_failed_callbacks, audit_results, metadata, migrate
from tests.support.factories import documented_error_body, error_body, result_body, seed_scan
from tests.support.warehouse import (
    callback,
    failed_callbacks,
    result_count,
    scan_row,
    store,
    unrecognised,
)


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


def test_the_writer_groups_concurrent_callbacks_and_a_bad_one_is_kept_alone(warehouse_url, monkeypatch):
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
    assert answers[0] == CallbackOutcome.UNRECOGNISED_RECORDED  # stored again alone, as its bytes
    assert answers[1:] == [CallbackOutcome.STORED] * (len(ids) - 1)
    assert max(batches) > 1, "concurrent callbacks share a transaction"
    bad = scan_row(warehouse_url, ids[0])
    assert bad["state"] == "failed" and "the warehouse refused its values" in bad["last_error"]
    assert result_count(warehouse_url) == len(ids) - 1


def test_failed_callbacks_in_one_batch_are_kept_once_each_and_a_result_still_wins(warehouse_url):
    for scan_id in ("doc-twice", "odd-then-result", "result-then-odd", "two-errors", "odd-twice"):
        seed_scan(warehouse_url, scan_id)
    first_error = documented_error_body()
    outcomes = store(
        warehouse_url,
        [
            callback("doc-twice", first_error),
            callback("doc-twice", documented_error_body()),  # the same body again: one row
            unrecognised("odd-then-result", {"event": "new"}),
            callback("odd-then-result", result_body("odd-then-result")),
            callback("result-then-odd", result_body("result-then-odd")),
            unrecognised("result-then-odd", [1, 2]),
            callback("two-errors", first_error),
            callback("two-errors", error_body("two-errors")),  # another body: kept, scan unchanged
            unrecognised("odd-twice", None, "the body is null, not a JSON object"),
            unrecognised("odd-twice", None, "the body is null, not a JSON object"),
            unrecognised("nobody", {"x": 1}),
        ],
    )
    S, F, R, D, U = (CallbackOutcome.STORED, CallbackOutcome.FAILED_RECORDED,
                     CallbackOutcome.UNRECOGNISED_RECORDED, CallbackOutcome.DUPLICATE,
                     CallbackOutcome.UNKNOWN_SCAN)  # fmt: skip
    assert outcomes == [F, D, R, S, S, D, F, D, R, D, U]

    documented_reason = "Copyleaks error download_failed (code 5): Failed to download the requested URL."
    assert scan_row(warehouse_url, "doc-twice")["last_error"] == documented_reason
    assert scan_row(warehouse_url, "two-errors")["last_error"] == documented_reason  # the first error
    odd = scan_row(warehouse_url, "odd-twice")
    assert odd["state"] == "failed"
    assert odd["last_error"] == UNRECOGNISED_REASON + "the body is null, not a JSON object"
    for scan_id in ("odd-then-result", "result-then-odd"):
        row = scan_row(warehouse_url, scan_id)
        assert (row["state"], row["last_error"]) == ("completed", None)

    kept = {(k["scan_id"], k["kind"]): k["raw_body"] for k in failed_callbacks(warehouse_url)}
    assert len(failed_callbacks(warehouse_url)) == 6  # doc-twice 1, two-errors 2, 1 each for the odd ones
    assert kept[("doc-twice", "error")] == first_error
    assert kept[("result-then-odd", "unrecognised")] == [1, 2]  # kept, though the result won
    assert kept[("odd-twice", "unrecognised")] is None
    assert sorted(k["raw_body"].get("status", 0) for k in failed_callbacks(warehouse_url, "two-errors")) == [
        0,
        1,
    ]

    # The same batch again: nothing changes anywhere.
    before = (
        failed_callbacks(warehouse_url),
        [scan_row(warehouse_url, s) for s in ("doc-twice", "odd-twice")],
    )
    again = store(
        warehouse_url,
        [
            callback("doc-twice", first_error),
            unrecognised("odd-twice", None, "the body is null, not a JSON object"),
        ],
    )
    assert again == [D, D]
    after = (
        failed_callbacks(warehouse_url),
        [scan_row(warehouse_url, s) for s in ("doc-twice", "odd-twice")],
    )
    assert after == before


def test_migrate_adds_the_failed_callbacks_table_to_an_existing_warehouse(warehouse_url):
    """A warehouse created before the table existed (and before versioned migrations) gets it when
    migrate() adopts it, data kept."""
    engine = get_engine(warehouse_url)
    seed_scan(warehouse_url, "old-scan")
    # As the warehouse was before this table: the first release's create_all, no schema version.
    downgrade(engine, FIRST_REVISION)
    audit_failed_callbacks.drop(engine)
    with engine.begin() as conn:
        conn.execute(text(f"DROP TABLE {VERSION_TABLE}"))
    assert "audit_failed_callbacks" not in inspect(engine).get_table_names()
    migrate(engine)
    migrate(engine)  # idempotent
    with engine.connect() as conn:
        assert conn.execute(text(f"SELECT version_num FROM {VERSION_TABLE}")).scalars().all() == [
            head_revision()
        ]
    assert {"audit_failed_callbacks", "audit_scans"} <= set(inspect(engine).get_table_names())
    assert set(metadata.tables) <= set(inspect(engine).get_table_names())
    assert scan_row(warehouse_url, "old-scan")["state"] == "submitted"
    assert store(warehouse_url, [callback("old-scan", documented_error_body())]) == [
        CallbackOutcome.FAILED_RECORDED
    ]
    assert len(failed_callbacks(warehouse_url, "old-scan")) == 1


def test_the_writer_keeps_concurrent_failed_callbacks_once(warehouse_url):
    ids = [f"f-{i:02d}" for i in range(12)]
    for scan_id in ids:
        seed_scan(warehouse_url, scan_id)

    async def go():
        engine = create_async_warehouse_engine(warehouse_url, write_transactions=True)
        writer = CallbackWriter(engine, writers=2, max_batch=5)
        try:
            calls = [
                writer.store(c)
                for s in ids
                for c in (
                    callback(s, documented_error_body()),
                    unrecognised(s, {"unknown": s}),
                    callback(s, documented_error_body()),
                )
            ]
            return await asyncio.gather(*calls)
        finally:
            await writer.close()
            await engine.dispose()

    answers = asyncio.run(go())
    assert answers.count(CallbackOutcome.DUPLICATE) == 2 * len(ids)
    assert answers.count(CallbackOutcome.FAILED_RECORDED) + answers.count(
        CallbackOutcome.UNRECOGNISED_RECORDED
    ) == len(ids)
    assert all(scan_row(warehouse_url, s)["state"] == "failed" for s in ids)
    assert len(failed_callbacks(warehouse_url)) == 2 * len(ids)


def test_a_stored_result_carries_its_masks_ai_pixels(warehouse_url):
    """``mask_pixels``, written with the result, is the decoded mask's count of AI pixels (the sum of
    the RLE lengths): what the report reads instead of the mask."""
    rng = np.random.default_rng(18)
    masks = {
        "empty": np.zeros((4, 8), dtype=bool),
        "full": np.ones((4, 8), dtype=bool),
        "runs": rng.random((37, 53)) < 0.3,  # many runs, across row ends
    }
    bodies = {}
    for scan_id, mask in masks.items():
        seed_scan(warehouse_url, scan_id)
        starts, lengths = encode_rle_mask(mask)
        height, width = mask.shape
        body = result_body(scan_id, width=width, height=height, ai_pixels=0)
        bodies[scan_id] = body | {"result": {"starts": starts, "lengths": lengths}}
    outcomes = store(warehouse_url, [callback(s, body) for s, body in bodies.items()])
    assert outcomes == [CallbackOutcome.STORED] * len(masks)
    r = audit_results.c
    with get_engine(warehouse_url).connect() as conn:
        query = select(r.scan_id, r.mask_pixels, r.mask_starts, r.mask_lengths, r.height, r.width)
        rows = {row.scan_id: row for row in conn.execute(query)}
    for scan_id, mask in masks.items():
        row = rows[scan_id]
        decoded = decode_rle_mask(row.mask_starts, row.mask_lengths, row.height, row.width)
        assert row.mask_pixels == int(decoded.sum()) == int(mask.sum()) == sum(row.mask_lengths)
    assert (rows["empty"].mask_pixels, rows["full"].mask_pixels) == (0, 32)


async def test_values_the_database_refuses_are_kept_as_bytes_not_retried_for_ever(warehouse_url):
    """The last line behind validation: a callback whose values the warehouse refuses (here a credit count
    past any integer column, built without validation) is stored again as its raw bytes, alone."""
    seed_scan(warehouse_url, "scan-refused")
    seed_scan(warehouse_url, "scan-fine")
    body = result_body("scan-refused")
    odd = WebhookBody.model_validate(body).model_copy(
        update={
            "scanned_document": ScannedDocument.model_construct(scan_id="scan-refused", actual_credits=2**70)
        }
    )
    raw_bytes = json.dumps(body).encode()
    writer = CallbackWriter(get_engine(warehouse_url), writers=1)
    try:
        outcomes = await asyncio.gather(
            writer.store(Callback("scan-refused", odd, body, raw_bytes=raw_bytes)),
            writer.store(Callback("scan-fine", WebhookBody.model_validate(result_body("scan-fine")), {})),
        )
    finally:
        await writer.close()
    assert outcomes == [CallbackOutcome.UNRECOGNISED_RECORDED, CallbackOutcome.STORED]
    row = scan_row(warehouse_url, "scan-refused")
    assert row["state"] == "failed" and "the warehouse refused its values" in row["last_error"]
    [kept] = failed_callbacks(warehouse_url)
    assert kept["kind"] == "unreadable" and base64.b64decode(kept["raw_body"]["base64"]) == raw_bytes
