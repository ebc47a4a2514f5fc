"""The warehouse as the webhook receiver's sink: callbacks group-committed by :class:`CallbackWriter`."""

from __future__ import annotations

import asyncio

from sqlalchemy import Engine, text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from copyleaks_provider.webhooks.callbacks import Callback, CallbackOutcome, CallbackSinkUnavailable
from image_audit.config import DEFAULT_WAREHOUSE_CONN_ID, warehouse_url_async
from image_audit.warehouse.engine import create_async_warehouse_engine, create_warehouse_engine, is_postgres
from image_audit.warehouse.results import CallbackWriter

#: Upper bound on waiting for the warehouse (connect, pool checkout, each statement), so a stalled
#: database gives a 503 well inside Copyleaks' 70 s delivery timeout instead of a hung request.
DATABASE_TIMEOUT_SECONDS = 10.0
#: Connections per worker process: the group-commit writers' and the health checks'.
POOL_SIZE, POOL_OVERFLOW = 8, 8
#: Concurrent group-commit transactions per worker process on PostgreSQL (SQLite has one writer).
POSTGRES_WRITERS = 2


class WarehouseCallbackSink:
    """Stores callbacks in the warehouse; the engine is created on first use: the api-server plugin
    is imported by every Airflow component, and an async pool belongs to the event loop that serves.

    PostgreSQL is written through asyncpg. SQLite through its sync driver in a worker thread: it has one
    writer anyway, and one thread hop per transaction costs less CPU than aiosqlite's hop per driver call.

    ``url``: default: that of the warehouse connection ``conn_id`` (looked up at first use).
    """

    def __init__(self, url: str | None = None, conn_id: str = DEFAULT_WAREHOUSE_CONN_ID):
        self._url = url
        self._conn_id = conn_id
        self._engine: Engine | AsyncEngine | None = None
        self._writer: CallbackWriter | None = None

    async def store(self, callback: Callback) -> CallbackOutcome:
        try:
            return await (await self._callback_writer()).store(callback)
        except SQLAlchemyError as exc:  # values it refused were kept raw by the writer: it is away
            raise CallbackSinkUnavailable("the warehouse is unavailable") from exc

    async def check(self) -> None:
        try:
            engine = await self._warehouse_engine()
            if isinstance(engine, Engine):
                await asyncio.to_thread(_select_one, engine)
            else:
                async with engine.connect() as conn:
                    await conn.execute(text("SELECT 1"))
        except SQLAlchemyError as exc:
            raise CallbackSinkUnavailable("the warehouse is unreachable") from exc

    async def close(self) -> None:
        if self._writer is not None:
            writer, self._writer = self._writer, None
            await writer.close()
        if self._engine is not None:
            engine, self._engine = self._engine, None
            if isinstance(engine, Engine):
                engine.dispose()
            else:
                await engine.dispose()

    async def _callback_writer(self) -> CallbackWriter:
        if self._writer is None:
            engine = await self._warehouse_engine()
            writers = POSTGRES_WRITERS if engine.dialect.name == "postgresql" else 1
            self._writer = CallbackWriter(engine, writers=writers)
        return self._writer

    async def _warehouse_engine(self) -> Engine | AsyncEngine:
        if self._engine is None:
            url = self._url or await warehouse_url_async(self._conn_id)
            pool = {
                "pool_size": POOL_SIZE,
                "max_overflow": POOL_OVERFLOW,
                "pool_timeout": DATABASE_TIMEOUT_SECONDS,
            }
            if is_postgres(url):
                timeout = DATABASE_TIMEOUT_SECONDS
                connect_args = {"timeout": timeout, "command_timeout": timeout}
                self._engine = create_async_warehouse_engine(
                    url, write_transactions=True, connect_args=connect_args, **pool
                )
            else:
                self._engine = create_warehouse_engine(url, write_transactions=True, **pool)
        return self._engine


def _select_one(engine: Engine) -> None:
    with engine.connect() as conn:
        conn.execute(text("SELECT 1"))
