"""The analytics model: ``image_standing`` and ``audit_daily``, the warehouse's documented tables for BI
tools (docs/analytics.md lists their columns), derived from ``audit_scans`` and ``audit_results``.

- ``image_standing``: one row per (image, model), resolved as the report resolves an image, but over
  every run: its latest completed scan (with a result), else its latest scan that was not a rejection,
  else its rejection (ties: highest attempt, latest update, highest scan id). The verdict is the
  report's rule (:func:`image_audit.warehouse.verdicts.verdict_sql`, same thresholds).
- ``audit_daily``: one row per (catalog ingestion day in UTC, source, model): the images of
  ``image_standing`` by their day and source, and every scan attempt of the day with its credits.

Both are recomputed from the per-scan tables, never incremented. :func:`refresh_changed` (each run's
``close_run`` task calls it) recomputes the standing of every image with a scan updated since the last
refresh (``analytics_refresh``: the run's own scans, a late callback's, a backfill's) and the daily rows
of every (day, source, model) they stood or stand on or a changed scan counts in; :func:`refresh_all`
recomputes everything (the migration's back-fill). A recompute deletes the rows it covers and inserts
them again in one transaction (serialised on PostgreSQL by an advisory lock, on SQLite by the write
lock), so running it twice gives the same rows.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime, timedelta

from sqlalchemy import (
    Boolean,
    Column,
    ColumnElement,
    Connection,
    Float,
    FromClause,
    Integer,
    MetaData,
    Select,
    String,
    Table,
    and_,
    case,
    cast,
    delete,
    false,
    func,
    literal,
    null,
    or_,
    select,
    text,
    tuple_,
    type_coerce,
    union_all,
    update,
)

from image_audit.warehouse.engine import as_utc
from image_audit.warehouse.lifecycle import ScanState
from image_audit.warehouse.schema import (
    analytics_refresh,
    audit_archived_days,
    audit_archived_images,
    audit_daily,
    audit_results,
    audit_scans,
    image_standing,
)
from image_audit.warehouse.verdicts import Thresholds, mask_area_sql, utc_day_sql, verdict_sql

#: Serialises recomputes on PostgreSQL (two reports finishing together).
_LOCK_ID = 0x1A6E_A0D5
#: ``audit_daily``'s key for a scan without an ingestion time or a source.
NO_DAY = ""
NO_SOURCE = ""
#: How pages and messages show a source that is ``NO_SOURCE``.
NO_SOURCE_LABEL = "(no source)"
#: A scan updated this long before the last refresh started is looked at again: a write stamped before
#: it may have committed after it read (writers stamp ``updated_at`` by their own clock, then commit).
LATE_COMMIT_MARGIN = timedelta(minutes=10)
#: ``analytics_refresh``'s row.
REFRESH_NAME = "model"
#: States in which a scan was sent to Copyleaks, so its credits count as expected (as in the report).
SENT_STATES = [ScanState.SUBMITTED, ScanState.COMPLETED, ScanState.FAILED, ScanState.TIMED_OUT]

DayKey = tuple[str, str, str]  # (ingest_day, source, model)


def image_key(scan=audit_scans.c):
    """What makes scans the same image: the image id (rows without one are each an image of their own),
    as in the report. ``scan``: the columns of ``audit_scans`` or of a selection of its rows."""
    return case((func.trim(scan.image_id) == "", scan.scan_id), else_=scan.image_id)


def _scan_day(dialect: str, scan=audit_scans.c) -> tuple:
    """The ``audit_daily`` key a scan's attempt counts in (as :func:`_standing_day` for a standing)."""
    return (
        func.coalesce(utc_day_sql(scan.ingested_at, dialect), NO_DAY),
        func.coalesce(scan.source, NO_SOURCE),
        scan.model,
    )


#: The (image key, model) pairs a recompute covers: a temporary table per connection, filled for each
#: recompute, so every read of the per-scan tables is an index lookup per image, never a scan of history.
#: ``scan_key``: the key is a scan id (a scan without an image id), or not; null when not known.
_SCRATCH = MetaData()
refresh_keys = Table(
    "analytics_refresh_keys",
    _SCRATCH,
    Column("image_id", String(255), primary_key=True),
    Column("model", String(64), primary_key=True),
    Column("scan_key", Boolean),
    prefixes=["TEMPORARY"],
)


def keys_of_scans(*conditions) -> Select:
    """The keys (``refresh_keys``' columns) of the images of the ``audit_scans`` rows meeting
    ``conditions``, for :func:`stage_keys`."""
    scan = audit_scans.c
    return select(image_key(), scan.model, func.trim(scan.image_id) == "").where(*conditions)


def stage_keys(conn: Connection, keys: Select | list[dict]) -> None:
    """Fill ``refresh_keys`` with the distinct keys ``keys`` selects (:func:`keys_of_scans`), or the
    (image key, model) rows it lists (distinct), on a fresh table."""
    schema = "temp" if conn.dialect.name == "sqlite" else "pg_temp"
    conn.exec_driver_sql(f"DROP TABLE IF EXISTS {schema}.{refresh_keys.name}")
    refresh_keys.create(conn)
    if isinstance(keys, Select):
        names = [column.name for column in refresh_keys.columns]
        conn.execute(refresh_keys.insert().from_select(names, keys.distinct()))
    elif keys:
        conn.execute(refresh_keys.insert(), [{**key, "scan_key": None} for key in keys])
    # statistics, so a planner drives the joins from the few keys into the per-scan tables' indexes
    conn.exec_driver_sql(f"ANALYZE {schema}.{refresh_keys.name}")


def scans_of_keys() -> FromClause:
    """The ``audit_scans`` rows of the staged keys: by image id (the (image_id, model) index), and the
    rows without an image id by scan id (the primary key), each for the keys that may be of its kind."""
    scan, key = audit_scans.c, refresh_keys.c
    blank = func.trim(scan.image_id) == ""
    by_image = (
        select(audit_scans)
        .join(refresh_keys, and_(scan.image_id == key.image_id, scan.model == key.model))
        .where(~blank, key.scan_key.is_not(True))
    )
    by_scan = (
        select(audit_scans)
        .join(refresh_keys, and_(scan.scan_id == key.image_id, scan.model == key.model))
        .where(blank, key.scan_key.is_not(False))
    )
    return union_all(by_image, by_scan).subquery("scans")


# --- image_standing -------------------------------------------------------------------------------------


def standing_query(
    dialect: str, thresholds: Thresholds = Thresholds(), scans: FromClause = audit_scans
) -> Select:
    """The rows of ``image_standing`` (its columns, in order) of the images of ``scans`` (``audit_scans``,
    or a selection of its rows holding every scan of each image it has)."""
    scan, result = scans.c, audit_results.c
    key = image_key(scan)
    partition = (key, scan.model)
    preference = case(
        (scan.state == ScanState.COMPLETED.value, 0), (scan.state != ScanState.REJECTED.value, 1), else_=2
    )
    order = [preference, scan.attempt.desc(), scan.updated_at.desc(), scan.scan_id.desc()]
    ranked = select(
        key.label("image_id"),
        scan.model,
        scan.scan_id,
        scan.dag_id,
        scan.run_id,
        scan.state,
        scan.source,
        scan.ingested_at,
        scan.last_error,
        func.row_number().over(partition_by=partition, order_by=order).label("rank"),
        func.sum(case((scan.state != ScanState.REJECTED.value, 1), else_=0))
        .over(partition_by=partition)
        .label("attempts"),
        func.min(scan.created_at).over(partition_by=partition).label("first_audited_at"),
        func.max(scan.created_at).over(partition_by=partition).label("last_audited_at"),
    ).subquery("ranked")
    top = ranked.c
    completed = and_(top.state == ScanState.COMPLETED.value, result.scan_id.is_not(None))
    # the latest error among the image's attempts, for an image that never completed (by the image id,
    # so the (image_id, model) index serves it; an image without an id has one scan: its own error)
    other = audit_scans.alias("other")
    latest_error = (
        select(other.c.last_error)
        .where(other.c.image_id == top.image_id, other.c.model == top.model, other.c.last_error.is_not(None))
        .order_by(other.c.attempt.desc(), other.c.updated_at.desc(), other.c.scan_id.desc())
        .limit(1)
        .scalar_subquery()
    )
    metadata = result.image_metadata
    return (
        select(
            top.image_id,
            top.model,
            top.scan_id,
            top.dag_id,
            top.run_id,
            top.state,
            verdict_sql(completed, result.ai, mask_area_sql(dialect), thresholds).label("verdict"),
            result.ai,
            mask_area_sql(dialect).label("mask_share"),
            metadata["issuedBy"].as_string().label("issued_by"),
            metadata["issuedTime"].as_string().label("issued_time"),
            metadata["appOrDeviceUsed"].as_string().label("app_or_device_used"),
            top.source,
            utc_day_sql(top.ingested_at, dialect).label("ingest_day"),
            top.attempts,
            top.first_audited_at,
            top.last_audited_at,
            case((completed, result.received_at), else_=null()).label("completed_at"),
            case((completed, null()), else_=func.coalesce(latest_error, top.last_error)).label("last_error"),
        )
        .select_from(ranked.outerjoin(audit_results, result.scan_id == top.scan_id))
        .where(top.rank == 1)
    )


# --- audit_daily ----------------------------------------------------------------------------------------


def daily_query(dialect: str, days: list[DayKey] | None = None, *, archive: bool = True) -> Select:
    """The rows of ``audit_daily`` (its columns, in order) for the (day, source, model) keys ``days``
    (``None``: every day); ``archive``: counting the archived scan attempts (``audit_archived_days``)."""
    stand = image_standing.c
    zero = literal(0)

    def where(*key, narrowing=()):
        return [] if days is None else [*narrowing, tuple_(*key).in_(days)]

    def flag(condition):
        return case((condition, 1), else_=0)

    stand_key = _standing_day(stand)
    completed = stand.verdict.is_not(None)
    images = select(
        *(k.label(n) for k, n in zip(stand_key, ("ingest_day", "source", "model"), strict=True)),
        literal(1).label("images"),
        flag(completed).label("completed"),
        flag(stand.verdict == "ai_generated").label("ai_generated"),
        flag(stand.verdict == "partly_ai").label("partly_ai"),
        flag(stand.verdict == "human").label("human"),
        case((completed, stand.ai), else_=null()).label("ai"),
        flag(stand.state == ScanState.FAILED.value).label("failed"),
        flag(stand.state == ScanState.TIMED_OUT.value).label("timed_out"),
        flag(stand.state == ScanState.REJECTED.value).label("rejected"),
        flag(stand.state.in_([ScanState.PENDING.value, ScanState.SUBMITTED.value])).label("in_flight"),
        zero.label("scans"),
        zero.label("results"),
        zero.label("expected_credits"),
        zero.label("actual_credits"),
    ).where(*where(*stand_key, narrowing=[_standing_of_days(days or [])]))
    scan_key = _scan_day(dialect)
    attempts = scan_attempts(dialect).where(
        *where(*scan_key, narrowing=[_scans_of_days(days or [], dialect)])
    )
    archived = audit_archived_days.c
    archived_attempts = select(
        archived.ingest_day,
        archived.source,
        archived.model,
        *(zero.label(n) for n in ("images", "completed", "ai_generated", "partly_ai", "human")),
        null().label("ai"),
        *(zero.label(n) for n in ("failed", "timed_out", "rejected", "in_flight")),
        archived.scans,
        archived.results,
        archived.expected_credits,
        archived.actual_credits,
    ).where(*where(archived.ingest_day, archived.source, archived.model))
    rows = union_all(images, attempts, *([archived_attempts] if archive else [])).subquery("rows")
    r = rows.c

    def total(name):
        return cast(func.coalesce(func.sum(r[name]), 0), Integer).label(name)

    done = func.sum(r.completed)
    share = case((done > 0, cast(func.sum(r.ai_generated), Float) / done), else_=null())
    mean = case((done > 0, cast(func.sum(r.ai), Float) / done), else_=null())
    return select(
        r.ingest_day,
        r.source,
        r.model,
        total("images"),
        total("completed"),
        total("ai_generated"),
        total("partly_ai"),
        total("human"),
        share.label("ai_share"),
        mean.label("mean_ai"),
        total("failed"),
        total("timed_out"),
        total("rejected"),
        total("in_flight"),
        total("scans"),
        total("results"),
        total("expected_credits"),
        total("actual_credits"),
    ).group_by(r.ingest_day, r.source, r.model)


def scan_attempts(dialect: str, scans: FromClause = audit_scans) -> Select:
    """One row per scan of ``scans`` in ``daily_query``'s columns: its daily key, and what it counts as an
    attempt (1 scan, its result, its expected and actual credits)."""
    scan, result, zero = scans.c, audit_results.c, literal(0)
    key = _scan_day(dialect, scan)
    sent = scan.state.in_([state.value for state in SENT_STATES])
    return select(
        *(k.label(n) for k, n in zip(key, ("ingest_day", "source", "model"), strict=True)),
        *(zero.label(n) for n in ("images", "completed", "ai_generated", "partly_ai", "human")),
        null().label("ai"),
        *(zero.label(n) for n in ("failed", "timed_out", "rejected", "in_flight")),
        literal(1).label("scans"),
        case((result.scan_id.is_not(None), 1), else_=0).label("results"),
        case((sent, scan.expected_credits), else_=0).label("expected_credits"),
        func.coalesce(result.actual_credits, 0).label("actual_credits"),
    ).select_from(scans.outerjoin(audit_results, result.scan_id == scan.scan_id))


def _standing_of_days(days: Iterable[DayKey]):
    """A condition on ``image_standing`` that its (day, source) index serves, true of every row of
    ``days`` (the exact key is matched besides)."""
    stand = image_standing.c

    def equals(column, value, none):
        return column.is_(None) if value == none else column == value

    pairs = sorted({(day, source) for day, source, _ in days})
    return or_(
        false(),
        *(
            and_(
                equals(stand.ingest_day, day, NO_DAY),
                or_(stand.source.is_(None), stand.source == "")
                if source == NO_SOURCE
                else stand.source == source,
            )
            for day, source in pairs
        ),
    )


def _scans_of_days(days: Iterable[DayKey], dialect: str):
    """A condition on ``audit_scans`` that its ``ingested_at`` index serves, true of every scan ingested
    on one of ``days`` (the exact key is matched besides): a range per day, as ``utc_day_sql`` reads it."""
    ingested = audit_scans.c.ingested_at
    ranges = []
    for day in sorted({day for day, _, _ in days}):
        if day == NO_DAY:
            ranges.append(ingested.is_(None))
            continue
        first = datetime.fromisoformat(day).replace(tzinfo=UTC)
        following = first + timedelta(days=1)
        if dialect == "sqlite":  # UTC wall time as text: the day's strings sort between these two
            text_value = type_coerce(ingested, String)
            ranges.append(and_(text_value >= day, text_value < following.date().isoformat()))
        else:
            ranges.append(and_(ingested >= first, ingested < following))
    return or_(false(), *ranges)


# --- recomputing ----------------------------------------------------------------------------------------


def lock(conn: Connection) -> None:
    """Take the recompute's lock for the rest of the transaction."""
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": _LOCK_ID})
    else:  # a write first: the transaction holds SQLite's write lock before it reads anything
        conn.execute(delete(audit_daily).where(literal(False)))


def _standing_day(stand=image_standing.c) -> tuple:
    """The ``audit_daily`` key a standing row counts in."""
    return func.coalesce(stand.ingest_day, NO_DAY), func.coalesce(stand.source, NO_SOURCE), stand.model


def _days_of_staged(conn: Connection, changed: ColumnElement[bool] | None) -> set[DayKey]:
    """The daily keys whose attempts or archived standing the staged images' recompute may change: the
    days of the scans meeting ``changed`` (every scan changed since the model was last right; ``None``:
    not known, every scan of the staged images), and the staged images' archived standing."""
    archived, key = audit_archived_images.c, refresh_keys.c
    of_keys = and_(archived.image_id == key.image_id, archived.model == key.model)
    archive = select(*_standing_day(archived)).join_from(audit_archived_images, refresh_keys, of_keys)
    if changed is None:
        scans = select(*_scan_day(conn.dialect.name, scans_of_keys().c))
    else:  # the range ``stage_keys`` read: not the images' whole history
        scans = select(*_scan_day(conn.dialect.name)).where(changed).distinct()
    return {tuple(row) for row in conn.execute(union_all(scans, archive))}


def refresh_days(conn: Connection, days: Iterable[DayKey] | None = None, *, archive: bool = True) -> int:
    """Recompute the ``audit_daily`` rows of ``days`` ((day, source, model) keys; ``None``: every day)
    from ``image_standing`` and the scans, in ``conn``'s transaction; returns the rows written."""
    keys = None if days is None else sorted(set(days))
    if keys == []:
        return 0
    daily = audit_daily.c
    stale = delete(audit_daily)
    if keys is not None:
        stale = stale.where(tuple_(daily.ingest_day, daily.source, daily.model).in_(keys))
    conn.execute(stale)
    names = [column.name for column in audit_daily.columns]
    insert = audit_daily.insert().from_select(names, daily_query(conn.dialect.name, keys, archive=archive))
    return conn.execute(insert).rowcount


def _refresh(
    conn: Connection,
    images: ColumnElement[bool] | list[dict] | None,
    thresholds: Thresholds,
    *,
    archive: bool = True,
) -> tuple[int, int]:
    """Recompute the standing of ``images`` and the daily rows they touch. ``images``: a condition true
    of every scan changed since the model was last right (their images, and only their days' attempts,
    are recomputed), or the (image key, model) rows to recompute, or ``None`` for every image."""
    lock(conn)
    dialect = conn.dialect.name
    names = [column.name for column in image_standing.columns]
    if images is None:
        conn.execute(delete(image_standing))
        written = conn.execute(
            image_standing.insert().from_select(names, standing_query(dialect, thresholds))
        ).rowcount
        if archive:
            archived = audit_archived_images.c
            stage_keys(conn, select(archived.image_id, archived.model, cast(null(), Boolean)))
            _merge_archived(conn)
        return written, refresh_days(conn, None, archive=archive)
    changed = None if isinstance(images, list) else images
    stage_keys(conn, images if changed is None else keys_of_scans(changed))
    stand, key = image_standing.c, refresh_keys.c
    staged = select(key.image_id, key.model)
    stale = delete(image_standing).where(tuple_(stand.image_id, stand.model).in_(staged))
    # the days a recomputed image stood on and stands on, from the statements that write its standing
    days = {tuple(row) for row in conn.execute(stale.returning(*_standing_day()))}
    fresh = image_standing.insert().from_select(names, standing_query(dialect, thresholds, scans_of_keys()))
    standing = conn.execute(fresh.returning(*_standing_day())).all()
    days.update(tuple(row) for row in standing)
    _merge_archived(conn)
    return len(standing), refresh_days(conn, days | _days_of_staged(conn, changed))


def _preference(row) -> int:
    """The order in which a standing is preferred (``standing_query``'s): completed, then any but a
    rejection, then a rejection."""
    if row["state"] == ScanState.COMPLETED.value:
        return 0
    return 1 if row["state"] != ScanState.REJECTED.value else 2


def _merge_archived(conn: Connection) -> None:
    """Fold the archived history of the staged images into their standing: the archive's standing where
    the image has no scan left (one statement), else the preferred of the two (the newer on a tie),
    counting the archived attempts and the first audit (row by row: only images re-audited after
    their archiving)."""
    archived, key, stand = audit_archived_images.c, refresh_keys.c, image_standing.c
    names = [column.name for column in image_standing.columns]
    of_keys = and_(archived.image_id == key.image_id, archived.model == key.model)
    live = (
        select(stand.image_id)
        .where(stand.image_id == archived.image_id, stand.model == archived.model)
        .exists()
    )
    snapshots = select(*(archived[name] for name in names)).join_from(
        audit_archived_images, refresh_keys, of_keys
    )
    for snapshot in conn.execute(snapshots.where(live)).mappings().all():
        pk = and_(stand.image_id == snapshot["image_id"], stand.model == snapshot["model"])
        current = conn.execute(select(image_standing).where(pk)).mappings().one()
        row = dict(current) if _preference(current) <= _preference(snapshot) else dict(snapshot)
        row["attempts"] = current["attempts"] + snapshot["attempts"]
        row["first_audited_at"] = min(
            as_utc(current["first_audited_at"]), as_utc(snapshot["first_audited_at"])
        )
        row["last_audited_at"] = max(as_utc(current["last_audited_at"]), as_utc(snapshot["last_audited_at"]))
        if row["state"] != ScanState.COMPLETED.value:
            row["last_error"] = current["last_error"] or snapshot["last_error"]
        conn.execute(update(image_standing).where(pk).values(**row))
    # after the merges: the rows inserted here would count as live for them
    conn.execute(image_standing.insert().from_select(names, snapshots.where(~live)))


def refresh_images(
    conn: Connection, images: Iterable[tuple[str, str]], thresholds: Thresholds = Thresholds()
) -> tuple[int, int]:
    """Recompute the standing of ``images`` ((image key, model) pairs) and the daily rows they touch, in
    ``conn``'s transaction; returns (standing rows, daily rows) written."""
    pairs = sorted(set(images))
    if not pairs:
        return 0, 0
    return _refresh(conn, [{"image_id": image_id, "model": model} for image_id, model in pairs], thresholds)


def refresh_changed(
    conn: Connection, thresholds: Thresholds = Thresholds(), *, now: datetime | None = None
) -> tuple[int, int]:
    """Recompute the standing of every image with a scan updated since the last refresh (less
    ``LATE_COMMIT_MARGIN``) and the daily rows they touch, in ``conn``'s transaction; the whole model
    when it was never refreshed. Returns (standing rows, daily rows) written."""
    started = now or datetime.now(UTC)
    lock(conn)
    refresh = analytics_refresh.c
    since = conn.execute(
        select(refresh.scans_updated_before).where(refresh.name == REFRESH_NAME)
    ).scalar_one_or_none()
    if since is None:
        return refresh_all(conn, thresholds, now=started)
    changed = audit_scans.c.updated_at >= as_utc(since) - LATE_COMMIT_MARGIN
    written = _refresh(conn, changed, thresholds)
    _mark_refreshed(conn, started)
    return written


def refresh_all(
    conn: Connection,
    thresholds: Thresholds = Thresholds(),
    *,
    now: datetime | None = None,
    archive: bool = True,
) -> tuple[int, int]:
    """Recompute the whole model from the per-scan tables (and with ``archive``, the archive's: false for
    a warehouse at a revision before it), in ``conn``'s transaction; returns (standing rows, daily rows)
    written."""
    started = now or datetime.now(UTC)
    written = _refresh(conn, None, thresholds, archive=archive)
    _mark_refreshed(conn, started)
    return written


def _mark_refreshed(conn: Connection, started: datetime) -> None:
    """Record that the model holds every scan updated before ``started``."""
    values = {"scans_updated_before": started, "refreshed_at": datetime.now(UTC)}
    updated = conn.execute(
        analytics_refresh.update().where(analytics_refresh.c.name == REFRESH_NAME).values(**values)
    ).rowcount
    if not updated:  # under the recompute's lock: nobody inserts it meanwhile
        conn.execute(analytics_refresh.insert().values(name=REFRESH_NAME, **values))
