"""Load: 10,000 callbacks at the receiver's maximum rate on PostgreSQL; every result stored exactly once.

The receiver runs as in production (``python -m image_audit.webhook``, secrets from the
Copyleaks connection) in its own process; the load generator plays Copyleaks with high concurrency
and, like Copyleaks, retries a delivery that did not get a 2xx. It is aiohttp, as the ingest
benchmark's generator (``bench/loadgen.py``): httpx's pool at 128 connections cost the sender so much
CPU that it, not the receiver, set the rate (about 120 callbacks/s).
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import sys
import time
from collections import Counter

import aiohttp
import pytest
from sqlalchemy import func, select

from bench.ingest import seed_submitted
from copyleaks_provider.webhooks.auth import webhook_url
from image_audit.warehouse.engine import get_engine
from image_audit.warehouse.schema import audit_results, audit_scans, migrate
from image_audit_dev.servers import free_port, server_process
from tests.support import ROOT
from tests.support.factories import result_body
from tests.support.reliability import FIGURES
from tests.support.warehouse import requires_postgres

pytestmark = [pytest.mark.slow, pytest.mark.postgres, requires_postgres]

CALLBACKS = 10_000
CONCURRENCY = 128
TRIES = 6


def _receiver(warehouse: str, secret: str):
    port = free_port()
    connection = {
        "conn_type": "copyleaks",
        "login": "a@b.c",
        "password": "k",
        "extra": {"webhook_secret": secret},
    }
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "AIRFLOW_CONN_IMAGE_AUDIT_WAREHOUSE": warehouse,
        "AIRFLOW_CONN_COPYLEAKS_DEFAULT": json.dumps(connection),
    }
    command = [sys.executable, "-m", "image_audit.webhook", "--port", str(port)]
    return server_process(command, port=port, env=env)


async def _deliver_all(base: str, secret: str, scan_ids: list[str]) -> Counter:
    """POST every callback (a tenth twice, as Copyleaks' duplicates); retry what got no 2xx."""
    answers: Counter[str] = Counter()
    gate = asyncio.Semaphore(CONCURRENCY)
    connector = aiohttp.TCPConnector(limit=CONCURRENCY, limit_per_host=CONCURRENCY)
    timeout = aiohttp.ClientTimeout(total=60)

    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def deliver(scan_id: str) -> None:
            content = json.dumps(result_body(scan_id)).encode()
            url = webhook_url(base, secret, scan_id)
            async with gate:
                for attempt in range(TRIES):
                    try:
                        async with session.post(
                            url, data=content, headers={"content-type": "application/json"}
                        ) as response:
                            answers[str(response.status)] += 1
                            if response.ok:
                                answers[(await response.json())["status"]] += 1
                                return
                    except (aiohttp.ClientError, TimeoutError) as exc:
                        answers[type(exc).__name__] += 1
                    await asyncio.sleep(0.2 * 2**attempt)  # the load generator backs off as Copyleaks does
                answers["given_up"] += 1

        duplicated = scan_ids[::10]
        await asyncio.gather(*(deliver(s) for s in [*scan_ids, *duplicated]))
    return answers


def test_ten_thousand_callbacks_at_full_rate_on_postgres_none_lost(postgres_databases):
    warehouse = postgres_databases.create()
    try:
        migrate(get_engine(warehouse))
        scan_ids = [f"load-{i:05d}" for i in range(CALLBACKS)]
        seed_submitted(warehouse, scan_ids)
        secret = secrets.token_urlsafe(16)
        with _receiver(warehouse, secret) as base:
            started = time.monotonic()
            answers = asyncio.run(_deliver_all(base, secret, scan_ids))
            elapsed = time.monotonic() - started

        with get_engine(warehouse).connect() as conn:
            rows = conn.execute(select(func.count(), func.count(audit_results.c.scan_id.distinct()))).one()
            states = dict(
                conn.execute(select(audit_scans.c.state, func.count()).group_by(audit_scans.c.state)).all()
            )
        sent = sum(v for k, v in answers.items() if k.isdigit() or k.endswith("Error"))
        print(
            f"\nload: {sent} callbacks in {elapsed:.1f} s ({sent / elapsed:.0f}/s); answers {dict(answers)}"
        )
        FIGURES["callbacks_sent"] += sent
        FIGURES["results_stored"] += rows[0]
        FIGURES["lost"] += CALLBACKS - rows[1]
        FIGURES["duplicates"] += rows[0] - rows[1]
        FIGURES["load_callbacks_per_second"] = round(sent / elapsed)
        assert answers["given_up"] == 0
        assert rows == (CALLBACKS, CALLBACKS), "every result row present exactly once"
        assert states == {"completed": CALLBACKS}
        assert answers["stored"] == CALLBACKS and answers["duplicate"] == len(scan_ids[::10])
    finally:
        postgres_databases.drop(warehouse)
