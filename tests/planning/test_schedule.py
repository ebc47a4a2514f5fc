"""The audit's schedule and what each kind of run asks planning for: the catalog's Asset or the nightly
cron; the watermark for runs without an interval of their own, their interval for backfills and runs
given a logical date."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from airflow.sdk import Asset, AssetOrTimeSchedule

from image_audit.planning.schedule import (
    CATALOG_ASSET_ENV,
    DEFAULT_CATALOG_ASSET,
    audit_interval,
    audit_schedule,
    catalog_asset,
    first_start,
)

DAY = datetime(2026, 11, 20, tzinfo=UTC)
NEXT = DAY + timedelta(days=1)
RUN_AFTER = datetime(2026, 11, 21, 5, 30, tzinfo=UTC)


def test_the_catalog_asset_is_named_by_the_environment_a_uri_when_it_has_a_scheme():
    assert catalog_asset({}) == Asset(name=DEFAULT_CATALOG_ASSET)
    assert catalog_asset({CATALOG_ASSET_ENV: "  team_catalog "}) == Asset(name="team_catalog")
    assert catalog_asset({CATALOG_ASSET_ENV: "s3://lake/catalog"}) == Asset(uri="s3://lake/catalog")


def test_the_schedule_is_the_asset_or_the_nightly_cron():
    schedule = audit_schedule(Asset(name="team_catalog"))
    assert isinstance(schedule, AssetOrTimeSchedule)
    assert schedule.asset_condition == Asset(name="team_catalog")
    assert (schedule.timetable.expression, str(schedule.timetable.timezone)) == ("0 0 * * *", "UTC")


@pytest.mark.parametrize("run_type", ["scheduled", "asset_triggered", "asset_materialization"])
def test_runs_without_an_interval_of_their_own_follow_the_watermark_to_their_run_after(run_type):
    interval = audit_interval(run_type, DAY, NEXT, RUN_AFTER)
    assert interval.follows_watermark and interval.end == RUN_AFTER
    assert interval.start == first_start(RUN_AFTER) == DAY  # the catalog's first claim: the day before


def test_a_backfill_and_a_manual_run_given_a_date_audit_their_interval():
    for run_type in ("backfill", "manual"):
        interval = audit_interval(run_type, DAY, NEXT, RUN_AFTER)
        assert (interval.start, interval.end, interval.follows_watermark) == (DAY, NEXT, False)
    with pytest.raises(ValueError, match="backfill run has no data interval"):
        audit_interval("backfill", None, None, RUN_AFTER)


def test_a_manual_run_without_a_date_follows_the_watermark():
    for start, end in ((None, None), (RUN_AFTER, RUN_AFTER)):  # no interval, or an empty one
        interval = audit_interval("manual", start, end, RUN_AFTER)
        assert interval.follows_watermark and interval.end == RUN_AFTER
