"""The night against the account's real balance and the data team's real catalog table, through the
real DAG (``dag.test`` on SQLite and PostgreSQL) and the emulator's account endpoints.

A night past the balance plans what the balance allows (less the reserve) and no submission is refused
for credits; a balance of nothing fails ``plan`` once, before anything is sent; the report reconciles the
balance with the scans' credits and Copyleaks' usage history. A catalog table without the optional
columns plans when their keys are omitted; a key naming a missing column fails ``plan`` once, naming it.
"""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from sqlalchemy import Column, DateTime, MetaData, Table, Text

from tests.support.factories import DAY

pytestmark = pytest.mark.slow


def test_a_night_past_the_balance_plans_the_balance_less_the_reserve(audit):
    audit.emulator.reset(credits=8)
    audit.seed(12, bad_rows=False)
    run = audit.run(DAY, credit_reserve=2)
    assert run.state == "success"
    state = audit.emulator.wait_idle()
    assert state["no_credits"] == 0 and len(state["submissions"]) == 6, state
    summary = audit.report(run.run_id)["summary"]
    assert summary["backlog"]["by_reason"]["credits"] == 6
    assert summary["credits"]["balance"] == {
        "before": 8,
        "after": 2,
        "spent": 6,
        "usage_history": 6,
        "reported_by_scans": 6,
        "unreconciled": False,
    }
    html_path = audit.report(run.run_id)["html_path"].removeprefix("file://")
    with open(html_path, encoding="utf-8") as html:
        page = html.read()
    assert "the account&#39;s credits (its balance less credit_reserve)" in page
    assert "The account spent exactly what this run's scans report." in page


def test_a_balance_of_nothing_fails_plan_once_and_submits_nothing(audit, capfd):
    audit.emulator.reset(credits=2)
    audit.seed(5, bad_rows=False)
    run = audit.run(DAY, credit_reserve=2)
    assert run.state == "failed"
    assert audit.task_state(run, "plan") == ("failed", 1)  # a top-up is needed, not a retry
    assert "The Copyleaks account has 2 credits and 2 are kept in reserve" in "".join(capfd.readouterr())
    assert audit.scans() == [] and audit.emulator.state()["submissions"] == {}


def _media_table(audit) -> None:
    table = Table(
        "media",
        MetaData(),
        Column("image_id", Text),
        Column("url", Text),
        Column("ingested_at", DateTime(timezone=True), nullable=False),
    )
    table.create(audit.engine)
    rows = [
        {"image_id": f"m-{i}", "url": audit.emulator.sample_url(f"img-0000{i}.jpg"), "ingested_at": DAY}
        for i in range(1, 4)
    ]
    with audit.engine.begin() as conn:
        conn.execute(table.insert(), [{**row, "ingested_at": DAY + timedelta(hours=1)} for row in rows])


def test_a_catalog_without_the_optional_columns_plans_with_their_keys_omitted(audit, monkeypatch):
    _media_table(audit)
    monkeypatch.setenv("AIRFLOW_VAR_IMAGE_AUDIT_CATALOG", json.dumps({"table": "media"}))
    run = audit.run(DAY)
    assert run.state == "success"
    scans = audit.scans()
    assert sorted(s["image_id"] for s in scans) == ["m-1", "m-2", "m-3"]
    assert {s["state"] for s in scans} == {"completed"}
    assert {s["file_name"] for s in scans} == {"img-00001.jpg", "img-00002.jpg", "img-00003.jpg"}


def test_a_key_naming_a_missing_column_fails_plan_once_naming_it(audit, monkeypatch, capfd):
    _media_table(audit)
    spec = {"table": "media", "source": "partner"}
    monkeypatch.setenv("AIRFLOW_VAR_IMAGE_AUDIT_CATALOG", json.dumps(spec))
    run = audit.run(DAY)
    assert run.state == "failed"
    assert audit.task_state(run, "plan") == ("failed", 1)
    expected = "the catalog table 'media' has no column 'partner' (the key 'source' of the Variable"
    assert expected in "".join(capfd.readouterr())
    assert audit.scans() == []
