"""Versioned warehouse migrations (Alembic, configured in code; the revisions in ``versions/``).

:func:`upgrade` brings a warehouse to this code's revision (the setup paths' call; safe concurrently;
it adopts a warehouse created before versioned migrations, whose tables carry no version), and
:func:`require_current` is the check of the paths that only use the warehouse: it raises
:class:`WarehouseNotCurrent` naming the command to run. ``image_catalog`` may be the data team's table:
created only when missing, never checked nor altered. A schema change is a new revision in
``versions/`` together with the same change in ``schema.py`` (a test fails when the two differ).
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from pathlib import Path
from types import ModuleType

from alembic import command
from alembic.config import Config
from alembic.operations import Operations
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy import Connection, Engine, create_engine, inspect, text
from sqlalchemy.exc import OperationalError

log = logging.getLogger(__name__)

#: Where a warehouse records its revision: not Alembic's ``alembic_version``, which Airflow's metadata or
#: another Alembic history in the same database may own.
VERSION_TABLE = "image_audit_alembic_version"
#: The schema as the releases before versioned migrations created it; legacy warehouses are stamped here.
FIRST_REVISION = "0001"
#: The data team's catalog table, when it is not ours: never checked nor altered.
CATALOG_TABLE = "image_catalog"
#: What an operator runs to bring the configured warehouse to this code's revision.
UPGRADE_COMMAND = "python -m image_audit.warehouse upgrade"

# Serialises concurrent upgrades on PostgreSQL (mapped tasks, several plans starting together); shared
# with the releases before versioned migrations, so their processes and these wait for each other.
_MIGRATION_LOCK_ID = 0x1A6E_A0D1
_SQLITE_ATTEMPTS = 5
# Alembic's ``context`` and ``op`` are module-wide proxies: one migration at a time per process.
_PROCESS_LOCK = threading.Lock()
_HERE = Path(__file__).resolve().parent


class WarehouseSchemaError(RuntimeError):
    """The warehouse's schema cannot be used or upgraded as it is."""


class WarehouseNotCurrent(WarehouseSchemaError):
    """The warehouse is not at this code's revision (``current``: ``None`` when it has no version)."""

    def __init__(self, message: str, current: str | None, head: str):
        super().__init__(message)
        self.current = current
        self.head = head


# --- Alembic, configured in code ----------------------------------------------------------------------


def alembic_config(connection: Connection | None = None) -> Config:
    """An Alembic ``Config`` for the warehouse revisions; ``env.py`` runs them on ``connection``."""
    config = Config()
    config.set_main_option("script_location", str(_HERE).replace("%", "%%"))
    config.set_main_option("path_separator", "os")
    config.attributes["connection"] = connection
    return config


@functools.cache
def _script() -> ScriptDirectory:
    return ScriptDirectory.from_config(alembic_config())


def head_revision() -> str:
    """The newest revision this code knows."""
    head = _script().get_current_head()
    assert head is not None, "no warehouse revisions"
    return head


def _context(conn: Connection) -> MigrationContext:
    return MigrationContext.configure(
        conn, opts={"version_table": VERSION_TABLE, "render_as_batch": conn.dialect.name == "sqlite"}
    )


def current_revision(engine: Engine) -> str | None:
    """The revision the warehouse records; ``None`` when it records none (empty, or created before
    versioned migrations: see :func:`describe`)."""
    with engine.connect() as conn:
        return _context(conn).get_current_revision()


# --- what a warehouse holds -----------------------------------------------------------------------------


def _first_revision_module() -> ModuleType:
    return _script().get_revision(FIRST_REVISION).module


@functools.cache
def _first_revision_shape() -> dict[str, tuple[frozenset[str], frozenset[str]]]:
    """``{table: (columns, indexes)}`` the first revision creates (on a scratch in-memory database);
    called with ``_PROCESS_LOCK`` held."""
    scratch = create_engine("sqlite://")
    try:
        with scratch.begin() as conn:
            command.upgrade(alembic_config(conn), FIRST_REVISION)
            inspector = inspect(conn)
            return {
                table: (
                    frozenset(c["name"] for c in inspector.get_columns(table)),
                    frozenset(i["name"] for i in inspector.get_indexes(table)),
                )
                for table in inspector.get_table_names()
                if table != VERSION_TABLE
            }
    finally:
        scratch.dispose()


def _owned_tables() -> frozenset[str]:
    """The pipeline's own tables (the first revision's, but the catalog)."""
    return frozenset(_first_revision_module().TABLES) - {CATALOG_TABLE}


def _state(conn: Connection) -> tuple[str | None, set[str]]:
    """(recorded revision, the pipeline's tables present)."""
    tables = set(inspect(conn).get_table_names())
    revision = _context(conn).get_current_revision() if VERSION_TABLE in tables else None
    return revision, tables & _owned_tables()


def describe(engine: Engine) -> str:
    """Where the warehouse is, in words: its revision against this code's, or why it has none."""
    with engine.connect() as conn:
        current, owned = _state(conn)
    head = head_revision()
    if current == head:
        return f"{current} (head)"
    if current is not None:
        if _known(current):
            return f"{current} (behind head {head}: run `{UPGRADE_COMMAND}`)"
        return f"{current} (unknown to this code, whose head is {head}: a newer release upgraded it)"
    if owned:
        return f"none: created before versioned migrations (`{UPGRADE_COMMAND}` adopts it, head {head})"
    return f"none: no image-audit tables yet (`{UPGRADE_COMMAND}` creates them, head {head})"


def _known(revision: str) -> bool:
    try:
        return _script().get_revision(revision) is not None
    except CommandError:
        return False


# --- upgrade ------------------------------------------------------------------------------------------


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Bring the warehouse to ``revision`` (default: the newest), adopting a warehouse created before
    versioned migrations; a no-op when it is there. Safe to run concurrently: on PostgreSQL an advisory
    lock serialises the callers, each upgrade is one transaction (DDL included) on both databases, and
    on SQLite a caller that loses the race retries and finds the work done."""
    if revision == "head" and current_revision(engine) == head_revision():
        return
    _run(engine, lambda conn: command.upgrade(alembic_config(conn), revision))


def downgrade(engine: Engine, revision: str) -> None:
    """Take the warehouse back to ``revision`` (rolling back a release; ``base`` drops the pipeline's
    tables and their data)."""
    _run(engine, lambda conn: command.downgrade(alembic_config(conn), revision))


def _run(engine: Engine, migrate_on) -> None:
    sqlite = engine.dialect.name == "sqlite"
    for attempt in range(1, _SQLITE_ATTEMPTS + 1):
        try:
            with _PROCESS_LOCK, engine.begin() as conn:
                if conn.dialect.name == "postgresql":
                    conn.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": _MIGRATION_LOCK_ID})
                current, owned = _state(conn)
                if current is not None and not _known(current):  # a newer release's: not ours to move
                    raise _not_current(engine, current, owned)
                if current is None and owned:
                    _adopt_legacy(conn)
                migrate_on(conn)
            return
        except OperationalError as exc:  # sqlite: a concurrent caller holds or took the write lock
            message = str(exc)
            if not sqlite or attempt == _SQLITE_ATTEMPTS:
                raise
            if "locked" not in message and "already exists" not in message:
                raise
            time.sleep(0.2 * attempt)


def _adopt_legacy(conn: Connection) -> None:
    """Stamp a warehouse created before versioned migrations at the first revision, when its tables
    are the first revision's (a table it never got is created first)."""
    inspector = inspect(conn)
    tables = set(inspector.get_table_names())
    problems = []
    for table, (columns, indexes) in sorted(_first_revision_shape().items()):
        if table == CATALOG_TABLE or table not in tables:
            continue
        missing = sorted(columns - {c["name"] for c in inspector.get_columns(table)})
        missing += sorted(indexes - {i["name"] for i in inspector.get_indexes(table)})
        if missing:
            problems.append(f"{table} lacks {', '.join(missing)}")
    if problems:
        raise WarehouseSchemaError(
            "The warehouse has image-audit tables but no schema version, and they are not those of the "
            f"first revision ({FIRST_REVISION}), so it cannot be adopted: " + "; ".join(problems) + ". "
            "Fix the tables by hand (or restore them), then run the upgrade again."
        )
    first = _first_revision_module()
    context = _context(conn)
    created = [table for table in first.TABLES if table not in tables]
    with Operations.context(context):
        for table in created:
            first.TABLES[table]()
    context.stamp(_script(), FIRST_REVISION)
    log.info(
        "Adopted a warehouse created before versioned migrations: stamped at %s%s",
        FIRST_REVISION,
        f", created {', '.join(created)}" if created else "",
    )


# --- the check of the paths that only use the warehouse -------------------------------------------------


def require_current(engine: Engine, *, create_empty: bool = False) -> None:
    """Raise :class:`WarehouseNotCurrent`, naming the command to run, unless the warehouse is at this
    code's revision. ``create_empty``: a warehouse without any of the pipeline's tables is created
    (there is nothing to lose, and no long lock to take) instead of refused."""
    head = head_revision()
    with engine.connect() as conn:
        current, owned = _state(conn)
    if current == head:
        return
    if current is None and not owned and create_empty:
        log.info("The warehouse has no image-audit tables: creating them (revision %s)", head)
        upgrade(engine)
        return
    raise _not_current(engine, current, owned)


def _not_current(engine: Engine, current: str | None, owned: set[str]) -> WarehouseNotCurrent:
    """The error saying where the warehouse is against this code, and what to run."""
    head = head_revision()
    where = engine.url.render_as_string(hide_password=True)
    if current is not None and not _known(current):
        message = (
            f"The warehouse ({where}) is at schema revision {current}, which this image-audit does not "
            f"know (its newest is {head}): a newer release upgraded it. Deploy that release everywhere, or "
            f"take the warehouse back with `python -m image_audit.warehouse downgrade {head}` run with "
            "the newer release's code."
        )
    elif current is not None:
        message = (
            f"The warehouse ({where}) is at schema revision {current}, behind this image-audit's {head}: "
            f"run `{UPGRADE_COMMAND}` (with the deployment's warehouse connection, or --url)."
        )
    elif owned:
        message = (
            f"The warehouse ({where}) was created before versioned migrations and records no schema "
            f"revision: run `{UPGRADE_COMMAND}` (it adopts the warehouse and brings it to {head})."
        )
    else:
        message = (
            f"The warehouse ({where}) has no image-audit tables: run `{UPGRADE_COMMAND}` to create them "
            f"(revision {head})."
        )
    return WarehouseNotCurrent(message, current, head)
