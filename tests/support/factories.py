"""Builders of the rows and bodies tests need: ``audit_scans`` rows and Copyleaks' webhook bodies.

One builder per thing, so a column or a wire field added tomorrow is added here once.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, date, datetime
from typing import Any

import numpy as np
from sqlalchemy import Connection, Engine

from copyleaks_provider.models import encode_rle_mask
from copyleaks_provider.scan_ids import DEFAULT_MODEL, canonical_model
from image_audit.warehouse.lifecycle import ScanState

#: The audit DAG's id, as the scans it plans carry it.
DAG_ID = "image_catalog_audit"
#: The model a scan is recorded with: the full name of the default model, as Copyleaks reports it.
MODEL = canonical_model(DEFAULT_MODEL)
#: The day the DAG tests audit (their catalogs are ingested on it).
DAY = datetime(2026, 11, 20, tzinfo=UTC)


# --- audit_scans rows ----------------------------------------------------------------------------------
def new_scan(
    scan_id: str,
    state: ScanState | str = ScanState.SUBMITTED,
    *,
    run_id: str = "run-1",
    dag_id: str = DAG_ID,
    at: datetime | None = None,
    **columns: Any,
) -> dict[str, Any]:
    """An ``audit_scans`` row: attempt 1 of image ``image-<scan_id>`` in ``state`` for ``run_id``, created
    and updated ``at`` (default: now); ``columns`` override or add any column."""
    at = at or datetime.now(UTC)
    row = {
        "scan_id": scan_id,
        "image_id": f"image-{scan_id}",
        "model": MODEL,
        "attempt": 1,
        "state": ScanState(state).value,
        "dag_id": dag_id,
        "run_id": run_id,
        "created_at": at,
        "updated_at": at,
    }
    return row | columns


def insert_scans(target: str | Engine | Connection, rows: list[dict[str, Any]]) -> list[str]:
    """Insert ``rows`` (see :func:`new_scan`) into the warehouse at ``target`` (a URL, an engine, or a
    connection whose transaction the caller commits); returns their scan ids."""
    from image_audit.warehouse.engine import get_engine
    from image_audit.warehouse.schema import audit_scans

    if rows:
        if isinstance(target, Connection):
            target.execute(audit_scans.insert(), rows)
        else:
            engine = get_engine(target) if isinstance(target, str) else target
            with engine.begin() as conn:
                conn.execute(audit_scans.insert(), rows)
    return [row["scan_id"] for row in rows]


def seed_scan(
    target: str | Engine, scan_id: str, state: ScanState = ScanState.SUBMITTED, run_id: str = "run-1"
) -> None:
    """One scan of ``run_id`` in ``state``, as planning and the submit task would have left it."""
    insert_scans(target, [new_scan(scan_id, state, run_id=run_id)])


def run_scans(
    run_id: str, state: ScanState, n: int, *, tag: str = "", **columns: Any
) -> list[dict[str, Any]]:
    """``n`` scans of ``run_id`` in ``state`` (rows for :func:`insert_scans`), each with ``columns``;
    ``tag`` tells apart groups of the same run and state. Every row has ``submitted_at`` and
    ``completed_at`` (None unless given), so groups inserted together keep their times (one INSERT
    takes the columns of its first row)."""
    prefix = hashlib.sha256(f"{run_id}/{state}/{tag}".encode()).hexdigest()[:24]
    times = {"submitted_at": None, "completed_at": None}
    return [
        new_scan(f"{prefix}-{i}", state, run_id=run_id, image_id=f"image-{prefix}-{i}", **times | columns)
        for i in range(n)
    ]


# --- Copyleaks' webhook bodies -------------------------------------------------------------------------
def result_body(scan_id: str, *, width: int = 8, height: int = 4, ai_pixels: int = 8) -> dict:
    """A detection result for ``scan_id``: its first ``ai_pixels`` pixels AI, of a ``width`` x ``height``
    image."""
    mask = np.zeros(width * height, dtype=bool)
    mask[:ai_pixels] = True
    starts, lengths = encode_rle_mask(mask)
    ai = ai_pixels / (width * height)
    return {
        "model": MODEL,
        "result": {"starts": starts, "lengths": lengths},
        "summary": {"ai": ai, "human": 1 - ai},
        "imageInfo": {"shape": {"height": height, "width": width}, "metadata": {"issuedBy": "test"}},
        "scannedDocument": {"scanId": scan_id, "actualCredits": 1, "expectedCredits": 1},
        "developerPayload": "run-1",
    }


def error_body(scan_id: str) -> dict:
    """The older error webhook shape: scannedDocument + error{code, message}."""
    return {"scannedDocument": {"scanId": scan_id}, "error": {"code": 400, "message": "image too small"}}


def documented_error_body(message: str = "Failed to download the requested URL.", **error) -> dict:
    """Copyleaks' documented error webhook: no scannedDocument (the scan id is the callback URL's)."""
    fields = {"type": "api_error", "id": "download_failed", "code": 5, "message": message, **error}
    return {"status": 1, "error": fields, "developerPayload": "run-1"}


def with_value(body: dict, path: str, value) -> dict:
    """``body`` with the value at the dotted ``path`` replaced."""
    body = json.loads(json.dumps(body))
    *parents, leaf = path.split(".")
    node = body
    for key in parents:
        node = node[key]
    node[leaf] = value
    return body


# --- audit_daily rows (the analytics model) -------------------------------------------------------
def daily_row(day: date, source: str, images: int, ai: int, *, failed: int = 0, model: str = MODEL) -> dict:
    """An ``audit_daily`` row: ``images`` of which ``ai`` AI-generated, ``failed`` failed, the rest human."""
    completed = images - failed
    return {
        "ingest_day": day.isoformat(), "source": source, "model": model, "images": images,
        "completed": completed, "ai_generated": ai, "partly_ai": 0, "human": completed - ai,
        "ai_share": ai / completed if completed else None, "mean_ai": None, "failed": failed,
        "timed_out": 0, "rejected": 0, "in_flight": 0, "scans": images, "results": completed,
        "expected_credits": images, "actual_credits": completed,
    }  # fmt: skip
