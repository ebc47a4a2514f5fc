"""The analytics model's reference (a plain Python reading of the per-scan tables) and random nights that
exercise it; shared by the model's tests and the archive's."""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from datetime import UTC, datetime, timedelta

from sqlalchemy import Connection, select, update

from image_audit.warehouse.analytics import refresh_changed
from image_audit.warehouse.schema import audit_daily, audit_results, audit_scans, image_standing
from image_audit.warehouse.verdicts import Thresholds, verdict_of
from tests.support.factories import MODEL, new_scan
from tests.support.reports import D1

SENT = {"submitted", "completed", "failed", "timed_out"}


def _utc(value):
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _norm(row: dict) -> dict:
    out = {}
    for key, value in row.items():
        if isinstance(value, datetime):
            value = _utc(value)
        elif isinstance(value, float):
            value = round(value, 9)
        out[key] = value
    return out


def expected_model(conn: Connection, thresholds: Thresholds = Thresholds()) -> tuple[dict, dict]:
    """(image_standing by (image, model), audit_daily by (day, source, model)), computed in Python."""
    scans = [dict(row) for row in conn.execute(select(audit_scans)).mappings()]
    results = {row["scan_id"]: dict(row) for row in conn.execute(select(audit_results)).mappings()}
    groups = defaultdict(list)
    for scan in scans:
        key = scan["scan_id"] if not scan["image_id"].strip() else scan["image_id"]
        groups[key, scan["model"]].append(scan)

    def latest(scan):
        return (scan["attempt"], _utc(scan["updated_at"]), scan["scan_id"])

    standing = {}
    for (image_id, model), rows in groups.items():
        rows = sorted(rows, key=latest, reverse=True)
        rows.sort(key=lambda s: 0 if s["state"] == "completed" else 1 if s["state"] != "rejected" else 2)
        best = rows[0]
        result = results.get(best["scan_id"])
        share = None
        if result is not None:
            pixels = result["width"] * result["height"]
            share = result["mask_pixels"] / pixels if pixels else None
        completed = best["state"] == "completed" and result is not None
        metadata = (result or {}).get("image_metadata") or {}
        errors = sorted((s for s in rows if s["last_error"] is not None), key=latest, reverse=True)
        ingested = _utc(best["ingested_at"])
        standing[image_id, model] = _norm(
            {
                "image_id": image_id,
                "model": model,
                "scan_id": best["scan_id"],
                "dag_id": best["dag_id"],
                "run_id": best["run_id"],
                "state": best["state"],
                "verdict": verdict_of(result["ai"], share, thresholds).value if completed else None,
                "ai": result["ai"] if result else None,
                "mask_share": share,
                "issued_by": metadata.get("issuedBy"),
                "issued_time": metadata.get("issuedTime"),
                "app_or_device_used": metadata.get("appOrDeviceUsed"),
                "source": best["source"],
                "ingest_day": ingested.strftime("%Y-%m-%d") if ingested else None,
                "attempts": sum(s["state"] != "rejected" for s in rows),
                "first_audited_at": min(_utc(s["created_at"]) for s in rows),
                "last_audited_at": max(_utc(s["created_at"]) for s in rows),
                "completed_at": _utc(result["received_at"]) if completed else None,
                "last_error": None if completed else (errors[0]["last_error"] if errors else None),
            }
        )

    counters = ["images", "completed", "ai_generated", "partly_ai", "human", "failed", "timed_out"]
    counters += ["rejected", "in_flight", "scans", "results", "expected_credits", "actual_credits"]
    daily: dict = defaultdict(lambda: dict.fromkeys(counters, 0) | {"ai_sum": 0.0})
    for row in standing.values():
        day = daily[row["ingest_day"] or "", row["source"] or "", row["model"]]
        day["images"] += 1
        if row["verdict"]:
            day["completed"] += 1
            day[row["verdict"]] += 1
            day["ai_sum"] += row["ai"]
        if row["state"] in ("failed", "timed_out", "rejected"):
            day[row["state"]] += 1
        if row["state"] in ("pending", "submitted"):
            day["in_flight"] += 1
    for scan in scans:
        ingested = _utc(scan["ingested_at"])
        day = daily[ingested.strftime("%Y-%m-%d") if ingested else "", scan["source"] or "", scan["model"]]
        result = results.get(scan["scan_id"])
        day["scans"] += 1
        day["results"] += result is not None
        day["expected_credits"] += scan["expected_credits"] if scan["state"] in SENT else 0
        day["actual_credits"] += (result or {}).get("actual_credits") or 0
    out = {}
    for (ingest_day, source, model), day in daily.items():
        ai_sum = day.pop("ai_sum")
        done = day["completed"]
        out[ingest_day, source, model] = _norm(
            {"ingest_day": ingest_day, "source": source, "model": model}
            | day
            | {
                "ai_share": day["ai_generated"] / done if done else None,
                "mean_ai": ai_sum / done if done else None,
            }
        )
    return standing, out


def model(conn: Connection) -> tuple[dict, dict]:
    """The two tables as stored, keyed as :func:`expected_model`."""
    standing = {
        (row["image_id"], row["model"]): _norm(dict(row))
        for row in conn.execute(select(image_standing)).mappings()
    }
    daily = {
        (row["ingest_day"], row["source"], row["model"]): _norm(dict(row))
        for row in conn.execute(select(audit_daily)).mappings()
    }
    return standing, daily


def assert_model_is_current(engine) -> tuple[dict, dict]:
    with engine.connect() as conn:
        stored, expected = model(conn), expected_model(conn)
    assert stored[0] == expected[0]
    assert stored[1] == expected[1]
    return stored


def random_nights(engine, rng: random.Random, nights: int = 6) -> Counter:
    """Nights of a DAG as the planner and the receiver would write them, at random: new images, blank ids,
    duplicates (rejected), retries of what failed or timed out (a new attempt), backfills of earlier
    days, a second model, results arriving after their scan failed or timed out; each night ends as the
    DAG's ``close_run`` ends it, and the model must then equal the per-scan tables' reading. Returns
    what the nights held."""
    held: Counter = Counter()
    sources = ["shop", "partner-feed", "uploads", None]
    retryable: list[dict] = []
    late: list[dict] = []
    serial = 0
    for night in range(nights):
        backfill = rng.random() < 0.3
        day = D1 - timedelta(days=rng.randrange(3, 20)) if backfill else D1 + timedelta(days=night)
        run_id = f"{'backfill' if backfill else 'scheduled'}__{day.date()}T00:00:00+00:00"
        held["backfills"] += backfill
        planned = [dict(retry, attempt=retry["attempt"] + 1) for retry in retryable if rng.random() < 0.6]
        retryable = [retry for retry in retryable if all(p["image_id"] != retry["image_id"] for p in planned)]
        for _ in range(rng.randrange(5, 15)):
            serial += 1
            image = rng.choice([f"img-{serial}", f"img-{rng.randrange(1, serial + 1)}", "", "  "])
            planned.append(
                {"image_id": image, "attempt": 1, "model": rng.choice([MODEL, MODEL, "ai-image-2"])}
            )
        scans, results = [], []
        for plan in planned:
            serial += 1
            now = datetime.now(UTC)
            state = rng.choice(["completed", "completed", "failed", "timed_out", "rejected", "submitted"])
            if any(s["image_id"] == plan["image_id"] and s["image_id"].strip() for s in scans):
                state = "rejected"  # a duplicate row of the night
            error = {"failed": "could not fetch", "timed_out": "no webhook", "rejected": "duplicate"}.get(
                state
            )
            ingested = day + timedelta(hours=rng.randrange(0, 24), seconds=rng.randrange(0, 3600))
            scan = new_scan(
                f"s{serial}", state, run_id=run_id, at=now, image_id=plan["image_id"], model=plan["model"],
                attempt=plan["attempt"], source=rng.choice(sources), ingested_at=ingested,
                expected_credits=rng.choice([1, 2]), last_error=error,
            )  # fmt: skip
            scans.append(scan)
            if state == "completed":
                results.append(random_result(rng, scan["scan_id"], plan["model"]))
            elif state in ("failed", "timed_out") and scan["image_id"].strip():
                (late if rng.random() < 0.3 else retryable).append(scan)
        with engine.begin() as conn:
            conn.execute(audit_scans.insert(), scans)
            if results:
                conn.execute(audit_results.insert(), results)
            # results of earlier nights' failures and time-outs arrive: the receiver completes the scan
            for scan in [
                late.pop(rng.randrange(len(late))) for _ in range(min(len(late), rng.randrange(0, 3)))
            ]:
                conn.execute(audit_results.insert(), random_result(rng, scan["scan_id"], scan["model"]))
                held["late results"] += 1
                conn.execute(
                    update(audit_scans)
                    .where(audit_scans.c.scan_id == scan["scan_id"])
                    .values(state="completed", updated_at=datetime.now(UTC))
                )
        with engine.begin() as conn:
            refresh_changed(conn)
        assert_model_is_current(engine)
    return held


def random_result(rng: random.Random, scan_id: str, model_name: str) -> dict:
    width, height = rng.choice([(40, 30), (64, 64)])
    pixels = rng.randrange(0, width * height // 2)
    metadata = {
        key: rng.choice([None, "Example Cam", "2026-11-19T10:00:00Z", "Gen AI 3"])
        for key in rng.sample(["issuedBy", "issuedTime", "appOrDeviceUsed"], rng.randrange(0, 4))
    }
    ai = round(rng.random(), 3)
    return {"scan_id": scan_id, "ai": ai, "human": round(1 - ai, 3), "model": model_name, "width": width,
            "height": height, "mask_starts": [0], "mask_lengths": [pixels], "mask_pixels": pixels,
            "image_metadata": metadata or None, "actual_credits": rng.choice([None, 1, 2]),
            "expected_credits": 1, "received_at": datetime.now(UTC), "raw_body": {}}  # fmt: skip
