"""Warehouse tables (SQLAlchemy Core): the schema at the newest revision of
``image_audit.warehouse.migrations``, which versions it (a change here is a new revision there).

Each index serves a hot query (its comment says which); the receiver's lookups use primary keys.
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    DateTime,
    Engine,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    text,
)

metadata = MetaData()
TZ = DateTime(timezone=True)
#: The states of a scan planning may take up again (``ix_audit_scans_leftovers``'s condition; a query
#: uses the index when its WHERE holds this very condition).
LEFTOVER_STATES = ["pending", "timed_out"]
LEFTOVER_STATES_SQL = f"state IN ({', '.join(repr(state) for state in LEFTOVER_STATES)})"


#: The catalog table as the demo and most data teams have it. The DAG only reads it, and its table and
#: column names are configurable (``image_audit.planning.catalog.CatalogSpec``).
image_catalog = Table(
    "image_catalog",
    metadata,
    Column("image_id", String(255), primary_key=True),
    Column("url", Text),
    Column("file_name", String(255)),
    Column("source", String(255)),
    Column("ingested_at", TZ, nullable=False),
    Column("fetch_headers_ref", String(255)),
    Index("ix_image_catalog_ingested_at", "ingested_at"),  # planning: rows ingested in a data interval
)

audit_batches = Table(
    "audit_batches",
    metadata,
    Column("batch_id", String(64), primary_key=True),
    Column("dag_id", String(250), nullable=False),
    Column("run_id", String(250), nullable=False),
    Column("size", Integer, nullable=False),
    Column("created_at", TZ, nullable=False),
    Index("ix_audit_batches_run", "dag_id", "run_id"),
)

audit_scans = Table(
    "audit_scans",
    metadata,
    Column("scan_id", String(36), primary_key=True),
    Column("image_id", String(255), nullable=False),
    Column("model", String(64), nullable=False),
    Column("attempt", Integer, nullable=False, default=1),
    Column("state", String(16), nullable=False),
    Column("url", Text),
    Column("file_name", String(255)),
    Column("source", String(255)),
    Column("ingested_at", TZ),
    Column("fetch_headers_ref", String(255)),
    Column("batch_id", String(64)),
    Column("dag_id", String(250)),
    Column("run_id", String(250)),
    Column("data_interval_start", TZ),
    Column("data_interval_end", TZ),
    Column("sandbox", Boolean, nullable=False, default=False),
    Column("expected_credits", Integer, nullable=False, default=1),
    Column("created_at", TZ, nullable=False),
    Column("updated_at", TZ, nullable=False),
    Column("submitted_at", TZ),
    Column("completed_at", TZ),
    Column("last_error", Text),
    Index("ix_audit_scans_run_state", "dag_id", "run_id", "state"),  # a run's scans by state
    Index("ix_audit_scans_image_model", "image_id", "model"),  # planning: image scanned with this model?
    Index("ix_audit_scans_batch", "batch_id"),  # submit task: the scans of a batch
    Index("ix_audit_scans_state_run", "state", "dag_id", "run_id"),  # trigger: waiting scans of many runs
    Index("ix_audit_scans_updated", "updated_at"),  # the analytics model: scans changed since its refresh
    Index("ix_audit_scans_ingested", "ingested_at"),  # the analytics model: the scans of a day
    # planning: the leftovers of earlier runs, whatever the size of the history (a partial index: it holds
    # the scans in these states alone, which statistics on ``state`` cannot tell a planner are few)
    Index(
        "ix_audit_scans_leftovers",
        "model",
        "created_at",
        sqlite_where=text(LEFTOVER_STATES_SQL),
        postgresql_where=text(LEFTOVER_STATES_SQL),
    ),
)

audit_results = Table(
    "audit_results",
    metadata,
    Column("scan_id", String(36), ForeignKey("audit_scans.scan_id"), primary_key=True),
    Column("ai", Float, nullable=False),
    Column("human", Float, nullable=False),
    Column("model", String(64), nullable=False),
    Column("width", Integer, nullable=False),
    Column("height", Integer, nullable=False),
    Column("mask_starts", JSON, nullable=False),
    Column("mask_lengths", JSON, nullable=False),
    Column("image_metadata", JSON),
    Column("actual_credits", Integer),
    Column("expected_credits", Integer),
    Column("developer_payload", Text),
    Column("received_at", TZ, nullable=False),
    Column("raw_body", JSON, nullable=False),
    # Pixels the mask marks as AI (the sum of ``mask_lengths``), stored with the result so the report
    # never reads the masks for their area. NULL only on rows stored before revision 0003 and not yet
    # back-filled: readers then sum ``mask_lengths`` themselves.
    Column("mask_pixels", Integer),
)

#: Every distinct error or unrecognised callback Copyleaks sent for a known scan, kept verbatim: the
#: error webhooks (both shapes) and authentic bodies the receiver could not read. One row per scan and
#: body (``body_sha256``: of the body's canonical JSON), so a repeated callback adds nothing; the scan's
#: state and ``last_error`` follow the ordering rules of ``image_audit.warehouse.results``. Adopting a
#: warehouse that lacks it creates it (``image_audit.warehouse.migrations``).
audit_failed_callbacks = Table(
    "audit_failed_callbacks",
    metadata,
    Column("scan_id", String(36), ForeignKey("audit_scans.scan_id"), primary_key=True),
    Column("body_sha256", String(64), primary_key=True),
    Column("kind", String(16), nullable=False),  # "error", "unrecognised" or "unreadable"
    Column("reason", Text, nullable=False),
    Column("received_at", TZ, nullable=False),
    # any JSON value (an unrecognised body may be a list); {"base64": ...}: an unreadable body's bytes
    Column("raw_body", JSON, nullable=False),
)

audit_reports = Table(
    "audit_reports",
    metadata,
    Column("dag_id", String(250), primary_key=True),
    Column("run_id", String(250), primary_key=True),
    Column("created_at", TZ, nullable=False),
    Column("data_interval_start", TZ),
    Column("data_interval_end", TZ),
    Column("summary", JSON, nullable=False),
    Column("html_path", Text),
    Column("csv_path", Text),
    Column("parquet_path", Text),
)

#: The catalog interval of each run that follows its catalog's watermark, written by the run's plan in
#: the transaction of its decisions (``image_audit.planning.watermark``). A catalog's watermark, the
#: point before which every row it ingested has been claimed by a run, is the latest ``interval_end``
#: of its intervals that advance it; the rows in order of ``interval_start`` are its history.
audit_run_intervals = Table(
    "audit_run_intervals",
    metadata,
    Column("dag_id", String(250), primary_key=True),
    Column("run_id", String(250), primary_key=True),
    Column("catalog", String(255), nullable=False),  # the catalog table: "table" or "schema.table"
    Column("interval_start", TZ, nullable=False),
    Column("interval_end", TZ, nullable=False),
    # False: the run read only part of its interval (a source filter, a limit) and left the watermark
    Column("advances_watermark", Boolean, nullable=False),
    Column("created_at", TZ, nullable=False),
    Index("ix_audit_run_intervals_catalog_end", "catalog", "interval_end"),  # planning: the watermark
)


# --- the analytics model (``image_audit.warehouse.analytics``; documented column by column in
# docs/analytics.md): derived from audit_scans and audit_results, recomputed as each run closes --------


#: One row per (image, model): where the image stands, as the report resolves it over every run.
def _standing_columns() -> list[Column]:
    """``image_standing``'s columns (also those of an archived image's snapshot)."""
    return [
        Column("image_id", String(255), primary_key=True),
        Column("model", String(64), primary_key=True),
        Column("scan_id", String(36), nullable=False),  # the attempt the row reads
        Column("dag_id", String(250)),
        Column("run_id", String(250)),
        Column("state", String(16), nullable=False),
        Column("verdict", String(16)),
        Column("ai", Float),
        Column("mask_share", Float),
        Column("issued_by", Text),
        Column("issued_time", Text),
        Column("app_or_device_used", Text),
        Column("source", String(255)),
        Column("ingest_day", String(10)),
        Column("attempts", Integer, nullable=False),
        Column("first_audited_at", TZ, nullable=False),
        Column("last_audited_at", TZ, nullable=False),
        Column("completed_at", TZ),
        Column("last_error", Text),
    ]


image_standing = Table(
    "image_standing",
    metadata,
    *_standing_columns(),
    Index("ix_image_standing_day_source", "ingest_day", "source"),  # audit_daily's recompute; BI filters
)


def _day_key() -> list[Column]:
    """The key of a daily row: (catalog ingestion day, source, model)."""
    return [
        Column("ingest_day", String(10), primary_key=True),  # "" when the catalog row had no ingestion time
        Column("source", String(255), primary_key=True),  # "" when the catalog row had no source
        Column("model", String(64), primary_key=True),
    ]


def _attempt_counts() -> list[Column]:
    """A day's scan attempts: the attempts, their results, and their expected and actual credits."""
    names = ("scans", "results", "expected_credits", "actual_credits")
    return [Column(name, Integer, nullable=False) for name in names]


#: One row per (catalog ingestion day, source, model): the images of the day as image_standing has them,
#: and every scan attempt of the day with its credits.
audit_daily = Table(
    "audit_daily",
    metadata,
    *_day_key(),
    Column("images", Integer, nullable=False),
    Column("completed", Integer, nullable=False),
    Column("ai_generated", Integer, nullable=False),
    Column("partly_ai", Integer, nullable=False),
    Column("human", Integer, nullable=False),
    Column("ai_share", Float),
    Column("mean_ai", Float),
    Column("failed", Integer, nullable=False),
    Column("timed_out", Integer, nullable=False),
    Column("rejected", Integer, nullable=False),
    Column("in_flight", Integer, nullable=False),
    *_attempt_counts(),
)


#: Per (day, source, model), the scan attempts archived out of ``audit_scans``
#: (``image_audit.maintenance.archive``): ``audit_daily`` counts them with the scans still there.
audit_archived_days = Table("audit_archived_days", metadata, *_day_key(), *_attempt_counts())

#: One row per (image, model) whose scans were archived: its ``image_standing`` row as it stood then,
#: and its latest attempt, so planning still knows the image was scanned (and numbers a forced re-audit
#: after it) and a later recompute of its standing keeps its history.
audit_archived_images = Table(
    "audit_archived_images",
    metadata,
    *_standing_columns(),
    Column("latest_attempt", Integer, nullable=False),
    Column("archived_at", TZ, nullable=False),
    Column("archive_uri", Text, nullable=False),
)

#: How far the analytics model has read: every scan updated before ``scans_updated_before`` (less a
#: margin for writes that commit late) is in it. One row, named ``model``.
analytics_refresh = Table(
    "analytics_refresh",
    metadata,
    Column("name", String(32), primary_key=True),
    Column("scans_updated_before", TZ, nullable=False),
    Column("refreshed_at", TZ, nullable=False),
)


def migrate(engine: Engine) -> None:
    """Bring the warehouse to the newest revision (creating it, or adopting one created before versioned
    migrations): the setup paths' call. Safe to run any number of times, concurrently. See
    ``image_audit.warehouse.migrations`` (``upgrade``, and ``require_current`` for the paths that only
    use the warehouse)."""
    from image_audit.warehouse.migrations import upgrade

    upgrade(engine)
