"""The reliability suite's deployments: an emulator whose account key is random, and DAG scenarios on
SQLite (PostgreSQL has the load and warehouse-cut tests). The invariants and figures:
tests/support/reliability.py."""

from __future__ import annotations

import secrets

import pytest


@pytest.fixture
def emulator(start_emulator):
    """An emulator of its own whose account key is random (as a real one is: no known value to leak)."""
    return start_emulator(accounts={"reliability@image-audit.dev": secrets.token_urlsafe(24)})


@pytest.fixture(params=["sqlite"])
def warehouse_url(request, tmp_path, monkeypatch):
    """The DAG scenarios run on SQLite only (time budget); PostgreSQL has the load test."""
    from image_audit.warehouse.engine import dispose_engines, get_engine
    from image_audit.warehouse.schema import migrate

    url = f"sqlite:///{tmp_path / 'warehouse.db'}"
    monkeypatch.setenv("AIRFLOW_CONN_IMAGE_AUDIT_WAREHOUSE", url)
    migrate(get_engine(url))
    yield url
    dispose_engines()
