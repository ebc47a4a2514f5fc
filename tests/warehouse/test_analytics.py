"""The analytics model (image_standing, audit_daily) on SQLite and PostgreSQL: it equals what a plain
Python reading of the per-scan tables gives, a recompute is idempotent, closing each run keeps it current
(late callbacks included), the migration back-fills it, and the example query of docs/analytics.md
returns the expected figures."""

from __future__ import annotations

import random
import re
from collections import Counter, defaultdict
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Connection, delete, select, text, update

from image_audit.reporting import build_run_report
from image_audit.warehouse.analytics import refresh_all, refresh_changed, refresh_images
from image_audit.warehouse.engine import get_engine
from image_audit.warehouse.migrations import current_revision, downgrade, head_revision, upgrade
from image_audit.warehouse.schema import (
    analytics_refresh,
    audit_daily,
    audit_results,
    audit_scans,
    image_standing,
)
from image_audit.warehouse.verdicts import Thresholds, verdict_of
from tests.support import ROOT
from tests.support.factories import MODEL, new_scan
from tests.support.reports import (
    D1,
    DAG_ID,
    EXPECTED,
    R1,
    R2,
    ImageFetcher,
    Scan,
    insert_report_scans,
    r1_scans,
    r2_scans,
)

SENT = {"submitted", "completed", "failed", "timed_out"}
#: A scan of run R1 that failed, and whose result arrives after the failure (see the late-result test).
LATE = Scan("q", "shop", D1, "failed", run_id=R1, error="Copyleaks could not fetch the image", scan_id="q-1")


def seed(engine) -> None:
    """R1 and R2's scans, stamped days ago: as the model had never been refreshed (its first refresh reads
    everything)."""
    insert_report_scans(engine, [*r1_scans(), LATE])
    insert_report_scans(engine, r2_scans())
    with engine.begin() as conn:
        conn.execute(delete(analytics_refresh))


# --- the reference: the model computed in Python from the per-scan tables ---------------------------------


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


def _report(engine, run_id, tmp_path, name):
    """What the end of a run does: ``close_run`` brings the model up to date, then ``report``."""
    with engine.begin() as conn:
        refresh_changed(conn)
    return build_run_report(engine, DAG_ID, run_id, out_dir=tmp_path / name, fetch_image=ImageFetcher())


# --- (1) the model equals the per-scan tables' reading, as the report keeps it ------------------------


def test_the_reports_keep_the_model_equal_to_the_per_scan_tables(warehouse_url, tmp_path):
    engine = get_engine(warehouse_url)
    seed(engine)
    _report(engine, R1, tmp_path, "r1")
    report = _report(engine, R2, tmp_path, "r2")
    standing, daily = assert_model_is_current(engine)

    # the run's images stand as its report counts them (same rule, same thresholds)
    verdicts = {image: row["verdict"] for (image, _), row in standing.items() if row["verdict"]}
    assert {i: v for i, v in verdicts.items() if i in EXPECTED["verdict_by_image"]} == EXPECTED[
        "verdict_by_image"
    ]
    assert report.summary["verdicts"] == {
        v: sum(1 for i, w in verdicts.items() if w == v and i != "p")
        for v in ("ai_generated", "partly_ai", "human")
    }
    # across runs: e timed out in R1, completed in R2 -> 2 attempts, first audited by R1
    e = standing["e", MODEL]
    assert (e["verdict"], e["attempts"], e["run_id"], e["last_error"]) == ("human", 2, R2, None)
    assert e["first_audited_at"] < e["last_audited_at"]
    # retries and time-outs: k timed out twice; a late first-attempt result (i) loses to attempt 2
    assert (standing["k", MODEL]["state"], standing["k", MODEL]["attempts"]) == ("timed_out", 2)
    assert standing["k", MODEL]["last_error"] == "no webhook before the run's wait ended"
    assert (standing["i", MODEL]["ai"], standing["i", MODEL]["verdict"]) == (0.97, "ai_generated")
    # rejections: a rejected duplicate of a completed image leaves it completed; blank ids are images
    assert standing["a", MODEL]["state"] == "completed"
    assert (standing["l", MODEL]["state"], standing["l", MODEL]["attempts"]) == ("rejected", 0)
    assert standing["l", MODEL]["last_error"] == "missing url"
    assert {standing[k, MODEL]["state"] for k in ("rej-blank-1", "rej-blank-2")} == {"rejected"}
    assert standing["rej-blank-1", MODEL]["last_error"] == "missing image id"
    # the provenance metadata and the masked share (f: 100 of 2,000 pixels)
    f = standing["f", MODEL]
    assert (f["issued_by"], f["mask_share"], f["verdict"]) == ("Example Camera Co", 0.05, "partly_ai")
    shop = daily["2026-11-20", "shop", MODEL]
    assert (shop["images"], shop["completed"], shop["ai_generated"], shop["failed"], shop["rejected"]) == (
        6,
        3,
        2,
        2,
        1,
    )  # fmt: skip  (a, b, h completed; j and q failed; l rejected)


def test_a_late_result_after_a_failure_is_counted_when_the_next_run_closes(warehouse_url, tmp_path):
    engine = get_engine(warehouse_url)
    seed(engine)
    _report(engine, R1, tmp_path, "r1")
    _report(engine, R2, tmp_path, "r2")
    with engine.connect() as conn:
        before = model(conn)
    assert (before[0]["q", MODEL]["state"], before[0]["q", MODEL]["last_error"]) == (
        "failed",
        "Copyleaks could not fetch the image",
    )

    # the result arrives after the failure: the receiver completes the scan (a result always wins)
    late = {"issuedBy": "Late Cam", "issuedTime": "2026-11-19T10:00:00Z", "appOrDeviceUsed": "Editor 2"}
    with engine.begin() as conn:
        conn.execute(
            audit_results.insert(),
            {"scan_id": "q-1", "ai": 0.93, "human": 0.07, "model": MODEL, "width": 50, "height": 40,
             "mask_starts": [0], "mask_lengths": [100], "mask_pixels": 100, "image_metadata": late,
             "actual_credits": 3, "expected_credits": 1, "received_at": datetime.now(UTC),
             "raw_body": {}},
        )  # fmt: skip
        conn.execute(
            update(audit_scans)
            .where(audit_scans.c.scan_id == "q-1")
            .values(state="completed", updated_at=datetime.now(UTC))
        )
    with engine.connect() as conn:
        assert model(conn) == before  # not until the model is recomputed

    _report(engine, "manual__next", tmp_path, "next")  # the next run to close picks the late result up
    standing, daily = assert_model_is_current(engine)
    q = standing["q", MODEL]
    assert (q["state"], q["verdict"], q["last_error"]) == ("completed", "ai_generated", None)
    assert (q["issued_by"], q["issued_time"], q["app_or_device_used"]) == (
        "Late Cam",
        "2026-11-19T10:00:00Z",
        "Editor 2",
    )
    shop, old = daily["2026-11-20", "shop", MODEL], before[1]["2026-11-20", "shop", MODEL]
    assert (shop["failed"], shop["ai_generated"], shop["results"]) == (
        old["failed"] - 1,
        old["ai_generated"] + 1,
        old["results"] + 1,
    )
    assert shop["actual_credits"] == old["actual_credits"] + 3


def test_an_image_that_moves_day_leaves_its_old_day(warehouse_url):
    engine = get_engine(warehouse_url)
    seed(engine)
    with engine.begin() as conn:
        refresh_all(conn)
        # the catalog re-ingested j the next day; a new attempt reads it there
        conn.execute(
            audit_scans.insert(),
            {"scan_id": "j-2", "image_id": "j", "model": MODEL, "attempt": 2, "state": "submitted",
             "source": "shop", "ingested_at": D1 + timedelta(days=3), "dag_id": DAG_ID, "run_id": "manual__x",
             "sandbox": False, "expected_credits": 1, "created_at": datetime.now(UTC),
             "updated_at": datetime.now(UTC)},
        )  # fmt: skip
        assert refresh_changed(conn) == (1, 2)  # j; its old day and its new one
    standing, daily = assert_model_is_current(engine)
    assert standing["j", MODEL]["ingest_day"] == "2026-11-23"
    assert daily["2026-11-23", "shop", MODEL]["in_flight"] == 1


def _random_nights(engine, rng: random.Random, nights: int = 6) -> Counter:
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
                results.append(_random_result(rng, scan["scan_id"], plan["model"]))
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
                conn.execute(audit_results.insert(), _random_result(rng, scan["scan_id"], scan["model"]))
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


def _random_result(rng: random.Random, scan_id: str, model_name: str) -> dict:
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


@pytest.mark.parametrize("seed_value", [1, 2, 3])
def test_random_nights_keep_the_model_equal_to_the_per_scan_tables(warehouse_url, seed_value):
    engine = get_engine(warehouse_url)
    held = _random_nights(engine, random.Random(seed_value), nights=8)
    assert held["late results"] and held["backfills"], held
    with engine.connect() as conn:
        standing, daily = model(conn)
    # the nights did what they are for: retries, rejections, late results, several days and models
    assert max(row["attempts"] for row in standing.values()) >= 2
    assert any(row["state"] == "rejected" for row in standing.values())
    assert len({key[0] for key in daily}) >= 3 and len({key[2] for key in daily}) == 2


# --- (2) idempotent ---------------------------------------------------------------------------------------


def test_recomputing_gives_the_same_rows(warehouse_url, tmp_path):
    engine = get_engine(warehouse_url)
    seed(engine)
    _report(engine, R2, tmp_path, "r2")
    with engine.begin() as conn:
        refresh_all(conn)
        once = model(conn)
    for recompute in (
        lambda conn: refresh_all(conn),
        lambda conn: refresh_all(conn),
        lambda conn: refresh_changed(conn),
        lambda conn: refresh_changed(conn, now=datetime.now(UTC) + timedelta(days=1)),
        lambda conn: refresh_images(conn, [("a", MODEL), ("e", MODEL), ("missing", MODEL)]),
        lambda conn: refresh_images(conn, []),
    ):
        with engine.begin() as conn:
            recompute(conn)
            assert model(conn) == once
    _report(engine, R2, tmp_path, "r2-again")
    with engine.connect() as conn:
        assert model(conn) == once
    assert_model_is_current(engine)


# --- (3) the migration back-fills a warehouse's existing rows -----------------------------------------


def test_the_migration_back_fills_the_model_from_existing_scans(warehouse_url):
    engine = get_engine(warehouse_url)
    downgrade(engine, "0004")  # a warehouse of the release before the model, with runs in it
    insert_report_scans(engine, [*r1_scans(), LATE])
    insert_report_scans(engine, r2_scans())
    upgrade(engine)
    assert current_revision(engine) == head_revision() == "0005"
    standing, daily = assert_model_is_current(engine)
    # R2: 17 images in 21 scans; R1: p, e (again) and q
    assert len(standing) == 19 and sum(row["scans"] for row in daily.values()) == 24
    downgrade(engine, "0004")
    with engine.connect() as conn:
        assert not {"image_standing", "audit_daily", "analytics_refresh"} & set(
            engine.dialect.get_table_names(conn)
        )
    upgrade(engine)
    assert_model_is_current(engine)
    # the back-fill marks the model refreshed: the next run's close recomputes only what changes after
    with engine.begin() as conn:
        assert refresh_changed(conn) == (0, 0)


# --- (4) the documentation's example query --------------------------------------------------------------


def example_query() -> str:
    page = (ROOT / "docs" / "analytics.md").read_text(encoding="utf-8")
    (query,) = re.findall(r"<!-- example-query -->\s*```sql\n(.*?)```", page, re.S)
    return query


def test_the_documented_example_query_returns_the_expected_figures(warehouse_url):
    engine = get_engine(warehouse_url)
    seed(engine)
    with engine.begin() as conn:
        refresh_all(conn)
    with engine.connect() as conn:
        rows = conn.execute(text(example_query()), {"since": "2026-11-20"}).all()
    # p (shop, ingested 2026-11-19) is before :since; q failed, so it is no completed image
    assert [(source, completed, ai_generated) for source, completed, ai_generated, _ in rows] == [
        ("", 1, 0),  # g
        ("blog", 4, 1),  # d, e, f, i; i
        ("shop", 5, 3),  # a, b, c, h, o; a, b, o
    ]
    assert [share for *_, share in rows] == pytest.approx([0.0, 0.25, 0.6])
