"""Planning's fixtures, and the Hypothesis profile of its property tests.

The property tests plan on a real warehouse (SQLite and PostgreSQL): a warehouse is made once per test
and emptied by each example, so the examples are few (the profile's count; a test may lower it), slow
(no deadline), and use the function-scoped warehouse on purpose.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import pytest
from hypothesis import HealthCheck, settings
from hypothesis.database import DirectoryBasedExampleDatabase
from sqlalchemy import Column, DateTime, MetaData, String, Table, Text

from image_audit.planning.catalog import CatalogSpec
from image_audit.warehouse.engine import get_engine

settings.register_profile(
    "planning",
    max_examples=75,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    # failing examples are replayed first next time; kept under var/ (ignored by git)
    database=DirectoryBasedExampleDatabase(Path(__file__).resolve().parents[2] / "var" / "hypothesis"),
)


@pytest.fixture
def engine(warehouse_url):
    """The engine of an empty, migrated warehouse, on SQLite and on PostgreSQL."""
    return get_engine(warehouse_url)


class TeamCatalog(NamedTuple):
    table: Table
    spec: CatalogSpec


@pytest.fixture
def team_catalog(engine) -> TeamCatalog:
    """A data team's own catalog table in the warehouse, empty: no primary key, so an image id may stand
    in several rows, and any row may lack any column but its ingestion time."""
    table = Table(
        "team_catalog",
        MetaData(),
        Column("image_id", String(255)),
        Column("url", Text),
        Column("file_name", String(255)),
        Column("source", String(255)),
        Column("ingested_at", DateTime(timezone=True), nullable=False),
        Column("fetch_headers_ref", String(255)),
    )
    table.create(engine)
    return TeamCatalog(table, CatalogSpec(table="team_catalog"))
