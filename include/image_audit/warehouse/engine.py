"""Engines for the warehouse URL: sync (psycopg2 / sqlite3) and async (asyncpg / aiosqlite).

SQLite is opened in WAL mode with a busy timeout so the receiver, the submit tasks and the trigger can
write and read the same file at once.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import Connection, Engine, Table, create_engine, event
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from image_audit.config import warehouse_url

SQLITE_BUSY_TIMEOUT_MS = 30_000
#: The warehouse's PostgreSQL sessions run without JIT compilation: its statements are short and
#: index-driven, but once the tables hold millions of rows their cost estimates cross ``jit_above_cost``
#: and compiling them costs more (tens of milliseconds a statement) than it saves.
POSTGRES_SETTINGS = {"jit": "off"}
_SYNC_DRIVERS = {"postgresql": "postgresql+psycopg2", "sqlite": "sqlite"}
_ASYNC_DRIVERS = {"postgresql": "postgresql+asyncpg", "sqlite": "sqlite+aiosqlite"}


def _with_driver(url: str, drivers: dict[str, str]) -> str:
    parsed = make_url(url)
    backend = parsed.get_backend_name()
    if backend not in drivers:
        raise ValueError(f"unsupported warehouse database {backend!r}: use sqlite or postgresql")
    return parsed.set(drivername=drivers[backend]).render_as_string(hide_password=False)


def sync_url(url: str) -> str:
    return _with_driver(url, _SYNC_DRIVERS)


def async_url(url: str) -> str:
    return _with_driver(url, _ASYNC_DRIVERS)


def is_postgres(url: str) -> bool:
    return make_url(url).get_backend_name() == "postgresql"


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    dbapi_connection.isolation_level = None  # SQLAlchemy, not the driver, opens transactions
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def get_engine(url: str | None = None) -> Engine:
    """The process-wide sync engine for ``url`` (default: the warehouse configured right now)."""
    return _engine_for(url or warehouse_url())


def dispose_engines() -> None:
    """Close every cached engine's connections and forget them (tests switch warehouses)."""
    for engine in list(_ENGINES.values()):
        engine.dispose()
    _ENGINES.clear()


_ENGINES: dict[str, Engine] = {}


def _engine_for(url: str) -> Engine:
    if url in _ENGINES:
        return _ENGINES[url]
    return _ENGINES.setdefault(url, create_warehouse_engine(url))


def create_warehouse_engine(url: str, *, write_transactions: bool = False, **kwargs) -> Engine:
    """A new sync engine for ``url`` (:func:`get_engine` keeps one per URL for the process).

    ``write_transactions``: on SQLite every transaction takes the write lock when it begins (for an
    engine whose transactions read then write, like the receiver's).
    """
    if is_postgres(url):
        connect_args = kwargs.pop("connect_args", {})
        settings = " ".join(f"-c {name}={value}" for name, value in POSTGRES_SETTINGS.items())
        options = " ".join(filter(None, [connect_args.get("options"), settings]))
        kwargs["connect_args"] = {**connect_args, "options": options}
    engine = create_engine(sync_url(url), pool_pre_ping=True, **kwargs)
    if not is_postgres(url):
        _listen_sqlite(engine, write_transactions)
    return engine


def _listen_sqlite(engine: Engine, write_transactions: bool) -> None:
    """WAL, busy timeout and synchronous=NORMAL on connect; BEGIN (IMMEDIATE for write transactions)."""
    event.listen(engine, "connect", _sqlite_pragmas)
    event.listen(engine, "begin", _sqlite_begin_immediate if write_transactions else _sqlite_begin)


def _sqlite_begin(conn) -> None:
    conn.exec_driver_sql("BEGIN")


def _sqlite_begin_immediate(conn) -> None:
    # Take the write lock up front: a read-then-write transaction that upgrades later may fail at
    # once with SQLITE_BUSY when another writer got in between, instead of waiting its turn.
    conn.exec_driver_sql("BEGIN IMMEDIATE")


def create_async_warehouse_engine(
    url: str | None = None, *, write_transactions: bool = False, **kwargs
) -> AsyncEngine:
    """A new async engine for ``url``; its owner disposes it (async pools belong to one event loop).

    ``write_transactions``: on SQLite every transaction takes the write lock when it begins (for an
    engine whose transactions read then write, like the receiver's).
    """
    url = url or warehouse_url()
    if is_postgres(url):
        connect_args = kwargs.pop("connect_args", {})
        settings = {**connect_args.get("server_settings", {}), **POSTGRES_SETTINGS}
        kwargs["connect_args"] = {**connect_args, "server_settings": settings}
    engine = create_async_engine(async_url(url), pool_pre_ping=True, **kwargs)
    if not is_postgres(url):
        _listen_sqlite(engine.sync_engine, write_transactions)
    return engine


def as_utc(value: datetime) -> datetime:
    """A timestamp read back from the warehouse as an aware UTC datetime: SQLite hands back the naive
    UTC it was given, PostgreSQL an aware one."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def dialect_insert(conn: Connection, table: Table):
    """``INSERT`` in the connection's dialect, for its ``ON CONFLICT`` clauses."""
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    return dialect.insert(table)
