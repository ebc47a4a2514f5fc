"""Change alerts (``image_audit.notifications.changes``): a source whose share jumps above the median of
its previous days is named, one within its baseline or under the minimum size is not; the real DAG's
``close_run`` sends one e-mail for them through a real SMTP server on loopback."""

from __future__ import annotations

from datetime import date, timedelta

import pytest

from image_audit.notifications.changes import run_days, source_changes
from image_audit.warehouse.engine import get_engine
from image_audit.warehouse.schema import audit_daily, migrate
from tests.support.alerts import RECIPIENT
from tests.support.alerts import body as _body
from tests.support.alerts import text as _text
from tests.support.factories import DAY, daily_row, insert_scans, new_scan

TODAY = date(2026, 11, 20)


def seed_history(engine, today: date, sources: dict[str, tuple[list[tuple[int, int, int]], tuple | None]]):
    """Per source: its previous days (images, AI-generated, failed) and today's (or None), as
    ``audit_daily`` rows."""
    rows = []
    for source, (history, now) in sources.items():
        for back, (images, ai, failed) in enumerate(reversed(history), start=1):
            rows.append(daily_row(today - timedelta(days=back), source, images, ai, failed=failed))
        if now is not None:
            rows.append(daily_row(today, source, *now[:2], failed=now[2]))
    with engine.begin() as conn:
        conn.execute(audit_daily.insert(), rows)


def test_a_jump_is_named_not_a_source_within_its_baseline_or_too_small(warehouse_url):
    migrate(get_engine(warehouse_url))
    seed_history(
        get_engine(warehouse_url),
        TODAY,
        {
            "jumper": ([(200, 10, 0)] * 14, (200, 80, 0)),  # 5% -> 40% AI
            "steady": ([(200, 20, 0), (200, 24, 0), (200, 16, 0)] * 4, (200, 38, 0)),  # 10% -> 19%: within 10
            "tiny": ([(200, 0, 0)] * 14, (20, 20, 0)),  # 0% -> 100%, but 20 images today
            "failing": ([(200, 10, 4)] * 14, (200, 10, 60)),  # failures 2% -> 30%
            "young": ([(200, 0, 0)] * 2, (200, 100, 0)),  # two days of history: no baseline yet
            "small-days": (
                [(50, 0, 0)] * 10 + [(200, 40, 0)] * 3,
                (200, 50, 0),
            ),  # baseline of 3 big days: 20%
            "x\r\nBcc: someone@example.com": ([(200, 0, 0)] * 14, (200, 100, 0)),  # an uploader's source
        },
    )
    with get_engine(warehouse_url).connect() as conn:
        found = source_changes(conn, [TODAY.isoformat()], points=10, min_images=100, baseline_days=14)
    assert {(c.source, c.metric) for c in found} == {
        ("jumper", "ai_share"),
        ("failing", "failed_share"),
        ("x\r\nBcc: someone@example.com", "ai_share"),
    }
    (odd,) = [c for c in found if c.source.startswith("x")]
    assert odd.name == "x  Bcc: someone@example.com"  # one line in a subject
    jumper = next(c for c in found if c.source == "jumper")
    assert (jumper.value, jumper.baseline, jumper.baseline_days, jumper.images) == (0.4, 0.05, 14, 200)
    assert (
        jumper.describe()
        == "jumper on 2026-11-20: AI-generated share 40.0%, its 14-day baseline 5.0% (200 images)"
    )


def test_the_runs_days_are_its_scans_ingestion_days(warehouse_url):
    migrate(get_engine(warehouse_url))
    at = DAY.replace(hour=23)
    insert_scans(
        warehouse_url,
        [
            new_scan("a", run_id="r", ingested_at=at),
            new_scan("b", run_id="r", ingested_at=at + timedelta(hours=2)),
            new_scan("c", run_id="other", ingested_at=at - timedelta(days=5)),
        ],
    )
    with get_engine(warehouse_url).connect() as conn:
        assert run_days(conn, "image_catalog_audit", "r") == ["2026-11-20", "2026-11-21"]


@pytest.mark.slow
def test_the_real_dag_sends_one_change_alert_for_the_sources_that_jumped(audit, smtp):
    """The run's day against 14 seeded days: every source at 0% AI before, but "stock" at 100% (today's
    share cannot be over it). Beside the run's own sources, the day holds two others: "big-feed" (10
    images, half AI) and "tiny-feed" (2 images, all AI: under the minimum of 3)."""
    audit.seed(24)
    day = DAY.date()
    sources = ["user-uploads", "stock", "marketing", "partner-feed", "archive"]
    history = {s: ([(10, 10 if s == "stock" else 0, 0)] * 14, None) for s in sources}
    history["big-feed"] = ([(10, 0, 0)] * 14, (10, 5, 0))
    history["tiny-feed"] = ([(10, 0, 0)] * 14, (2, 2, 0))
    seed_history(audit.engine, day, history)
    run = audit.run(DAY, alert_change_points=10, alert_change_min_images=3, alert_to=[RECIPIENT])
    assert run.state == "success"
    by_source = audit.report(run.run_id)["summary"]["by_source"]
    jumped = {s for s, f in by_source.items() if f["images"] >= 3 and f["ai_share"] > 0.10} - {"stock"}
    assert jumped, by_source  # the emulator's samples give some of the run's sources AI
    assert by_source["stock"]["images"] >= 3 and by_source["stock"]["ai_share"] > 0.10  # over 10%, under 100%

    [(recipients, message)] = smtp.wait_for(1)
    assert len(smtp.messages) == 1 and recipients == [RECIPIENT]
    text = _text(_body(message))
    named = {line[2:].split(" on ")[0] for line in text.splitlines() if line.startswith("- ")}
    assert named == jumped | {"big-feed"}
    assert "big-feed on 2026-11-20: AI-generated share 50.0%, its 14-day baseline 0.0% (10 images)" in text
    assert "/dags/image_catalog_audit/plugin/audit-trends" in text
    assert str(message["Subject"]).startswith("[image-audit] image_catalog_audit: ")
