"""When the audit runs, and which catalog rows a run audits.

The audit DAG runs when the catalog's Asset is updated (the data team's ingestion lists it in its
outlets, or any producer posts an event for it), and at 00:00 UTC at the latest:
``AssetOrTimeSchedule`` on :func:`catalog_asset` or the nightly cron (:func:`audit_schedule`).

What a run audits depends on how it started (:func:`audit_interval`):

- a run the Asset started, the nightly run, and a manual run without a logical date follow the
  catalog's watermark (``image_audit.planning.watermark``): the rows ingested since the last point a run
  audited, up to when the run was due (its ``run_after``); the catalog's first such run starts at 00:00
  UTC of the day before (:func:`first_start`: the nightly run's previous-day window);
- a backfill, and a manual run given a logical date, audit their data interval (a day, as the nightly
  cron cuts them) and leave the watermark where it is.

Images a run finds already scanned are skipped whatever its interval, so an interval audited twice (a
backfill of a day a watermark run claimed) plans no image twice.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from airflow.sdk import Asset, AssetOrTimeSchedule, CronDataIntervalTimetable

#: The environment variable naming the catalog's Asset, read when the DAG file is parsed.
CATALOG_ASSET_ENV = "IMAGE_AUDIT_CATALOG_ASSET"
#: The catalog's Asset when the variable is unset.
DEFAULT_CATALOG_ASSET = "image_catalog"
#: The nightly run, the audit's latest start: every day at 00:00 UTC, over the previous day.
NIGHTLY_CRON = "0 0 * * *"
#: The run types that follow the watermark whatever their data interval (Airflow's ``DagRunType``).
WATERMARK_RUN_TYPES = frozenset({"scheduled", "asset_triggered", "asset_materialization"})
BACKFILL_RUN_TYPE = "backfill"


def catalog_asset(environ: dict[str, str] | None = None) -> Asset:
    """The catalog's Asset, as ``IMAGE_AUDIT_CATALOG_ASSET`` names it: a value with ``://`` is its URI
    (``Asset(uri=...)``), any other its name (``Asset(name=...)``), as the producer declares it."""
    value = (os.environ if environ is None else environ).get(CATALOG_ASSET_ENV, "").strip()
    value = value or DEFAULT_CATALOG_ASSET
    return Asset(uri=value) if "://" in value else Asset(name=value)


def audit_schedule(asset: Asset | None = None) -> AssetOrTimeSchedule:
    """The audit DAG's schedule: on ``asset`` (default :func:`catalog_asset`), or the nightly cron."""
    return AssetOrTimeSchedule(
        timetable=CronDataIntervalTimetable(NIGHTLY_CRON, timezone="UTC"),
        assets=asset if asset is not None else catalog_asset(),
    )


def first_start(end: datetime) -> datetime:
    """Where the first watermark run of a catalog ending at ``end`` starts: 00:00 UTC of the day before
    ``end``'s day (for the nightly run at midnight, exactly its previous day)."""
    end = end.astimezone(UTC)
    day = datetime(end.year, end.month, end.day, tzinfo=UTC)
    return day - timedelta(days=1)


@dataclass(frozen=True)
class AuditInterval:
    """What a run asks planning for: ``[start, end)``, or, when it ``follows_watermark``, the catalog's
    watermark to ``end`` (``start``: where the catalog's first claim starts)."""

    start: datetime
    end: datetime
    follows_watermark: bool


def audit_interval(
    run_type: str,
    data_interval_start: datetime | None,
    data_interval_end: datetime | None,
    run_after: datetime,
) -> AuditInterval:
    """The interval a run of ``run_type`` (Airflow's ``DagRunType``, or its value) asks for."""
    kind = getattr(run_type, "value", run_type)
    explicit = data_interval_start is not None and data_interval_end is not None
    if kind == BACKFILL_RUN_TYPE:  # a past day again: its own interval, never the watermark
        if not explicit:
            raise ValueError("a backfill run has no data interval")
        return AuditInterval(data_interval_start, data_interval_end, follows_watermark=False)
    if kind in WATERMARK_RUN_TYPES or not explicit or data_interval_start >= data_interval_end:
        return AuditInterval(first_start(run_after), run_after, follows_watermark=True)
    return AuditInterval(data_interval_start, data_interval_end, follows_watermark=False)
