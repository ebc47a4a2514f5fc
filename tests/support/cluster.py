"""The tests' local clusters (``image_audit_dev.cluster.LocalCluster``): the marks a cluster test carries,
and one on databases and a Redis database of its own, stopped and its databases dropped however the test
ends (its logs stay under the test's directory)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from image_audit_dev.cluster import LocalCluster
from tests.support.warehouse import POSTGRES_URL, REDIS_URL

#: A cluster test: alone (its timings), slow, and only where PostgreSQL and Redis are.
CLUSTER_TEST = [
    pytest.mark.serial,
    pytest.mark.slow,
    pytest.mark.skipif(
        not (POSTGRES_URL and REDIS_URL),
        reason="set IMAGE_AUDIT_TEST_POSTGRES_URL and IMAGE_AUDIT_TEST_REDIS_URL to run the cluster test",
    ),
]


def redis_database(number: int) -> str:
    """The tests' Redis server, database ``number``: each cluster test has one of its own."""
    return (REDIS_URL or "").rsplit("/", 1)[0] + f"/{number}"


@contextmanager
def running_cluster(home: Path, *, redis_db: int, prefix: str, **options) -> Iterator[LocalCluster]:
    """A running ``LocalCluster`` named ``<prefix>_<random>`` (``options``: its other fields)."""
    local = LocalCluster(
        postgres_url=POSTGRES_URL,
        redis_url=redis_database(redis_db),
        home=home,
        name=f"{prefix}_{uuid.uuid4().hex[:8]}",
        **options,
    )
    try:
        with local:
            yield local
    finally:
        local.drop_databases()
