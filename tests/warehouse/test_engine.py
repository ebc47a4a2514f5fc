"""The warehouse's engines (``image_audit.warehouse.engine``): the session settings each backend gets."""

from __future__ import annotations

from sqlalchemy import text

from image_audit.warehouse.engine import create_async_warehouse_engine, create_warehouse_engine
from tests.support.warehouse import POSTGRES_URL, new_sqlite_url, requires_postgres


@requires_postgres
def test_postgres_sessions_run_without_jit_and_keep_the_callers_options():
    engine = create_warehouse_engine(POSTGRES_URL, connect_args={"options": "-c statement_timeout=4321"})
    try:
        with engine.connect() as conn:
            assert conn.execute(text("SHOW jit")).scalar_one() == "off"
            assert conn.execute(text("SHOW statement_timeout")).scalar_one() == "4321ms"
    finally:
        engine.dispose()


@requires_postgres
async def test_async_postgres_sessions_run_without_jit_and_keep_the_callers_settings():
    engine = create_async_warehouse_engine(
        POSTGRES_URL, connect_args={"timeout": 5, "server_settings": {"application_name": "engine-test"}}
    )
    try:
        async with engine.connect() as conn:
            assert (await conn.execute(text("SHOW jit"))).scalar_one() == "off"
            assert (await conn.execute(text("SHOW application_name"))).scalar_one() == "engine-test"
    finally:
        await engine.dispose()


def test_sqlite_sessions_use_the_write_ahead_log_and_wait_for_locks(tmp_path):
    engine = create_warehouse_engine(new_sqlite_url(tmp_path))
    try:
        with engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar_one() == "wal"
            assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar_one() == 30_000
    finally:
        engine.dispose()
