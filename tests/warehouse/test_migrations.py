"""Versioned warehouse migrations on SQLite and PostgreSQL: the revisions build schema.py's tables, an
upgrade keeps every row, a warehouse created by the create_all of earlier releases is adopted, the
check names the command to run, and the command line upgrades the configured warehouse."""

from __future__ import annotations

import random
import subprocess
import sys
import threading
from datetime import UTC, datetime, timedelta

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Column, Engine, ForeignKey, Index, MetaData, String, Table, inspect, select, text

from image_audit.warehouse.engine import dispose_engines, get_engine
from image_audit.warehouse.migrations import (
    FIRST_REVISION,
    UPGRADE_COMMAND,
    VERSION_TABLE,
    WarehouseNotCurrent,
    WarehouseSchemaError,
    _script,
    current_revision,
    downgrade,
    head_revision,
    require_current,
    upgrade,
)
from image_audit.warehouse.schema import (
    audit_batches,
    audit_failed_callbacks,
    audit_reports,
    audit_results,
    audit_scans,
    image_catalog,
    metadata,
    migrate,
)
from image_audit_dev.servers import dev_environment
from tests.support import ROOT
from tests.support.factories import MODEL, insert_scans, new_scan
from tests.support.warehouse import new_sqlite_url, requires_postgres

T0 = datetime(2026, 11, 20, tzinfo=UTC)
DATA_TABLES = (
    image_catalog,
    audit_batches,
    audit_scans,
    audit_results,
    audit_failed_callbacks,
    audit_reports,
)
#: What the second revision changes (everything else of the first revision is schema.py's).
NEW_INDEX = ("ix_audit_scans_state_run", ("state", "dag_id", "run_id"))
OLD_INDEX = ("ix_audit_scans_state", ("state",))
#: What the third revision adds: each result's mask pixels, back-filled from its ``mask_lengths``.
NEW_COLUMN = ("audit_results", "mask_pixels")
#: Indexes later revisions added, which the legacy schema did not have.
LATER_INDEXES = ("ix_audit_scans_updated", "ix_audit_scans_ingested", "ix_audit_scans_leftovers")
#: What the fourth revision adds (the runs' claims on the catalog's watermark) and the fifth (the analytics
#: model, back-filled from the scans: tests/warehouse/test_analytics.py) and the sixth (the archive's).
NEW_TABLES = (
    "audit_run_intervals",
    "image_standing",
    "audit_daily",
    "analytics_refresh",
    "audit_archived_days",
    "audit_archived_images",
)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=[pytest.mark.postgres, requires_postgres])])
def new_database(request, tmp_path):
    """A factory of empty databases (no tables) on SQLite and on PostgreSQL, dropped afterwards."""
    created: list[str] = []

    def create() -> str:
        if request.param == "sqlite":
            url = new_sqlite_url(tmp_path)
        else:
            url = request.getfixturevalue("postgres_databases").create()
        created.append(url)
        return url

    yield create
    dispose_engines()
    if request.param == "postgres":
        for url in created:
            request.getfixturevalue("postgres_databases").drop(url)


# --- helpers ------------------------------------------------------------------------------------------


def shape(url: str) -> dict:
    """Every table but the version table, as reflected: columns (type, nullability), keys, indexes."""
    inspector = inspect(get_engine(url))
    tables = {}
    for table in sorted(set(inspector.get_table_names()) - {VERSION_TABLE}):
        tables[table] = {
            "columns": [(c["name"], str(c["type"]), c["nullable"]) for c in inspector.get_columns(table)],
            "primary_key": inspector.get_pk_constraint(table)["constrained_columns"],
            "foreign_keys": sorted(
                (tuple(f["constrained_columns"]), f["referred_table"], tuple(f["referred_columns"]))
                for f in inspector.get_foreign_keys(table)
            ),
            "indexes": sorted(
                (i["name"], tuple(i["column_names"]), bool(i["unique"])) for i in inspector.get_indexes(table)
            ),
        }
    return tables


def legacy_metadata(*, without: tuple[str, ...] = ()) -> MetaData:
    """schema.py's tables as the releases before versioned migrations had them (their create_all)."""
    legacy = MetaData()
    for table in metadata.sorted_tables:
        if table.name in without or table.name in NEW_TABLES:
            continue
        if table.name == NEW_COLUMN[0]:
            columns = [
                Column(c.name, c.type, *(ForeignKey(k.target_fullname) for k in c.foreign_keys),
                       primary_key=c.primary_key, nullable=c.nullable)
                for c in table.columns
                if c.name != NEW_COLUMN[1]
            ]  # fmt: skip
            Table(table.name, legacy, *columns)
        else:
            table.to_metadata(legacy)
    scans = legacy.tables["audit_scans"]
    for index in [index for index in scans.indexes if index.name in (NEW_INDEX[0], *LATER_INDEXES)]:
        scans.indexes.discard(index)
    Index(OLD_INDEX[0], *(scans.c[name] for name in OLD_INDEX[1]))
    return legacy


def seed(url: str, *, failed_callbacks: bool = True) -> None:
    """Rows in every table: catalog rows, a batch, scans in several states, results, a failed callback,
    a report."""
    scans = [
        new_scan(
            f"scan-{i}",
            state,
            run_id="scheduled__2026-11-20",
            at=T0,
            image_id=f"img-{i}",
            attempt=1 + i % 2,
            url=f"https://images.example.com/{i}.png",
            file_name=f"{i}.png",
            source="feed",
            ingested_at=T0 - timedelta(hours=i),
            batch_id="batch-1" if state != "pending" else None,
            data_interval_start=T0 - timedelta(days=1),
            data_interval_end=T0,
            sandbox=i % 2 == 0,
            expected_credits=1,
            updated_at=T0 + timedelta(minutes=i),
            last_error="Copyleaks could not fetch the image" if state == "failed" else None,
        )
        for i, state in enumerate(["completed", "completed", "submitted", "failed", "pending", "timed_out"])
    ]
    with get_engine(url).begin() as conn:
        conn.execute(
            image_catalog.insert(),
            [
                {"image_id": f"img-{i}", "url": f"https://images.example.com/{i}.png", "file_name": None,
                 "source": "feed", "ingested_at": T0 - timedelta(hours=i), "fetch_headers_ref": None}
                for i in range(8)
            ],
        )  # fmt: skip
        conn.execute(
            audit_batches.insert(),
            {"batch_id": "batch-1", "dag_id": "image_catalog_audit", "run_id": "scheduled__2026-11-20",
             "size": 5, "created_at": T0},
        )  # fmt: skip
        insert_scans(conn, scans)
        conn.execute(
            audit_results.insert(),
            [
                {"scan_id": f"scan-{i}", "ai": 0.25 * (i + 1), "human": 1 - 0.25 * (i + 1),
                 "model": MODEL, "width": 640, "height": 480, "mask_starts": [0, 100 * i],
                 "mask_lengths": [10, 20], "image_metadata": {"exif": {"Make": "Canon"}},
                 "actual_credits": 1, "expected_credits": 1, "developer_payload": None,
                 "received_at": T0 + timedelta(minutes=5), "raw_body": {"scannedDocument": {"scanId": i}}}
                for i in (0, 1)
            ],
        )  # fmt: skip
        if failed_callbacks:
            conn.execute(
                audit_failed_callbacks.insert(),
                {"scan_id": "scan-3", "body_sha256": "ab" * 32, "kind": "error",
                 "reason": "Copyleaks could not fetch the image", "received_at": T0,
                 "raw_body": {"error": {"code": 5, "message": "fetch failed"}}},
            )  # fmt: skip
        conn.execute(
            audit_reports.insert(),
            {"dag_id": "image_catalog_audit", "run_id": "scheduled__2026-11-20", "created_at": T0,
             "data_interval_start": T0 - timedelta(days=1), "data_interval_end": T0,
             "summary": {"images": 6, "verdicts": {"ai": 1, "human": 1}}, "html_path": "/r/a.html",
             "csv_path": "/r/a.csv", "parquet_path": "/r/a.parquet"},
        )  # fmt: skip


def snapshot(url: str) -> dict[str, list[tuple]]:
    """Every row of every data table, in primary-key order (a table not there: no rows), in the columns
    of the first revision (the new column is checked by :func:`mask_pixels`)."""
    present = set(inspect(get_engine(url)).get_table_names())
    with get_engine(url).connect() as conn:
        return {
            table.name: [
                tuple(row)
                for row in conn.execute(
                    select(*(c for c in table.columns if (table.name, c.name) != NEW_COLUMN)).order_by(
                        *table.primary_key
                    )
                )
            ]
            if table.name in present
            else []
            for table in DATA_TABLES
        }


def mask_pixels(url: str) -> dict[str, int | None]:
    """``audit_results.mask_pixels`` by scan id."""
    with get_engine(url).connect() as conn:
        return dict(conn.execute(select(audit_results.c.scan_id, audit_results.c.mask_pixels)).all())


def column_names(url: str, table: str = "audit_results") -> set[str]:
    return {column["name"] for column in inspect(get_engine(url)).get_columns(table)}


def index_names(url: str, table: str = "audit_scans") -> set[str]:
    return {index["name"] for index in inspect(get_engine(url)).get_indexes(table)}


# --- the revisions and schema.py ----------------------------------------------------------------------


def test_the_revisions_build_exactly_the_tables_of_schema_py(new_database):
    migrated, created = new_database(), new_database()
    upgrade(get_engine(migrated))
    metadata.create_all(get_engine(created))
    assert shape(migrated) == shape(created)
    assert set(shape(migrated)) == set(metadata.tables)
    with get_engine(migrated).connect() as conn:
        context = MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE})
        assert compare_metadata(context, metadata) == []


def test_the_first_revision_is_the_create_all_of_earlier_releases(new_database):
    first, legacy = new_database(), new_database()
    upgrade(get_engine(first), FIRST_REVISION)
    legacy_metadata().create_all(get_engine(legacy))
    assert shape(first) == shape(legacy)
    assert current_revision(get_engine(first)) == FIRST_REVISION != head_revision()


# --- upgrading a warehouse with data --------------------------------------------------------------------


def test_an_upgrade_from_the_first_revision_keeps_every_row(new_database):
    url = new_database()
    engine = get_engine(url)
    upgrade(engine, FIRST_REVISION)
    seed(url)
    before = snapshot(url)
    assert {name: len(rows) for name, rows in before.items()} == {
        "image_catalog": 8, "audit_batches": 1, "audit_scans": 6, "audit_results": 2,
        "audit_failed_callbacks": 1, "audit_reports": 1,
    }  # fmt: skip
    assert OLD_INDEX[0] in index_names(url) and NEW_INDEX[0] not in index_names(url)

    migrate(engine)  # what the setup paths call: to head

    assert current_revision(engine) == head_revision()
    assert snapshot(url) == before
    assert NEW_INDEX[0] in index_names(url) and OLD_INDEX[0] not in index_names(url)
    assert mask_pixels(url) == {"scan-0": 30, "scan-1": 30}  # back-filled: the sum of [10, 20]
    with engine.connect() as conn:
        result = conn.execute(select(audit_results).where(audit_results.c.scan_id == "scan-1")).one()
        scan = conn.execute(select(audit_scans).where(audit_scans.c.scan_id == "scan-3")).one()
    assert (result.ai, result.mask_starts, result.image_metadata) == (
        0.5,
        [0, 100],
        {"exif": {"Make": "Canon"}},
    )
    assert (scan.state, scan.last_error) == ("failed", "Copyleaks could not fetch the image")
    assert scan.ingested_at.replace(tzinfo=scan.ingested_at.tzinfo or UTC) == T0 - timedelta(hours=3)

    # And back (rolling back a release), and forth again: still every row.
    downgrade(engine, FIRST_REVISION)
    assert current_revision(engine) == FIRST_REVISION and OLD_INDEX[0] in index_names(url)
    assert NEW_COLUMN[1] not in column_names(url)
    assert snapshot(url) == before
    migrate(engine)
    assert snapshot(url) == before and current_revision(engine) == head_revision()
    assert mask_pixels(url) == {"scan-0": 30, "scan-1": 30}


def test_the_upgrade_back_fills_each_results_mask_pixels_in_batches(new_database):
    """The third revision sets ``mask_pixels`` (the sum of ``mask_lengths``) on the results already
    stored, in SQL, batch by batch: every row whatever the batch boundaries, and only rows still NULL."""
    url = new_database()
    engine = get_engine(url)
    upgrade(engine, "0002")
    seed(url)
    rng = random.Random(18)
    lengths = {
        "scan-0": [],
        "scan-1": [7],
        "scan-2": [1, 2, 3],
        "scan-3": [rng.randint(1, 5_000) for _ in range(2_000)],
        "scan-4": [640 * 480],
        "scan-5": [rng.randint(1, 9) for _ in range(40)],
    }
    template = {"ai": 0.5, "human": 0.5, "model": MODEL, "width": 640, "height": 480,
                "received_at": T0, "raw_body": {}}  # fmt: skip
    with engine.begin() as conn:
        conn.execute(audit_results.delete())
        conn.execute(
            audit_results.insert(),
            [
                template | {"scan_id": s, "mask_starts": [0] * len(n), "mask_lengths": n}
                for s, n in lengths.items()
            ],
        )  # inserted without the new column: as rows stored before it existed
    expected = {scan_id: sum(n) for scan_id, n in lengths.items()}

    migrate(engine)
    assert mask_pixels(url) == expected

    backfill = _script().get_revision("0003").module.backfill
    with engine.begin() as conn:  # rows a back-fill has not reached, one already set: by batches of 2
        conn.execute(audit_results.update().values(mask_pixels=None))
        conn.execute(audit_results.update().where(audit_results.c.scan_id == "scan-3").values(mask_pixels=1))
        assert backfill(conn, batch=2) == 5
    assert mask_pixels(url) == expected | {"scan-3": 1}
    for batch in (1, 5, 6, 100):
        with engine.begin() as conn:
            conn.execute(audit_results.update().values(mask_pixels=None))
            assert backfill(conn, batch=batch) == 6
        assert mask_pixels(url) == expected


def _a_warehouse_at_the_first_revision(new_database) -> tuple[str, Engine, dict]:
    """A seeded warehouse at the first revision: its URL, engine and rows (:func:`snapshot`)."""
    url = new_database()
    engine = get_engine(url)
    upgrade(engine, FIRST_REVISION)
    seed(url)
    return url, engine, snapshot(url)


def test_upgrades_running_at_once_in_processes_upgrade_once(new_database):
    """Mapped tasks, or every component of a deployment, starting together on an old warehouse."""
    url, engine, before = _a_warehouse_at_the_first_revision(new_database)
    processes = [
        subprocess.Popen(
            [sys.executable, "-m", "image_audit.warehouse", "upgrade", "--url", url],
            env=dev_environment(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    outputs = [process.communicate(timeout=120) for process in processes]
    assert [process.returncode for process in processes] == [0] * 4, [err[-2000:] for _, err in outputs]
    # On SQLite a loser may have started too: its transaction rolled back, its retry found the work done.
    assert any(f"Running upgrade {FIRST_REVISION}" in err for _, err in outputs)
    assert current_revision(engine) == head_revision()
    assert snapshot(url) == before


def test_upgrades_running_at_once_in_threads_upgrade_once(new_database):
    url, engine, before = _a_warehouse_at_the_first_revision(new_database)
    errors = []

    def run():
        try:
            migrate(engine)
        except Exception as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert current_revision(engine) == head_revision()
    assert snapshot(url) == before


# --- adopting a warehouse created before versioned migrations ---------------------------------------


def test_a_warehouse_created_by_create_all_is_adopted_then_upgraded(new_database):
    url = new_database()
    engine = get_engine(url)
    legacy_metadata().create_all(engine)  # what migrate() did before versioned migrations
    seed(url)
    before = snapshot(url)
    assert current_revision(engine) is None

    migrate(engine)
    migrate(engine)  # then a no-op

    assert current_revision(engine) == head_revision()
    assert snapshot(url) == before
    assert shape(url) == shape(_created_by_the_revisions(new_database))
    with engine.connect() as conn:
        assert conn.execute(text(f"SELECT version_num FROM {VERSION_TABLE}")).scalars().all() == [
            head_revision()
        ]


def test_a_warehouse_of_the_first_release_gets_the_tables_added_since(new_database):
    """The first release had no audit_failed_callbacks: adoption creates it, then stamps and upgrades."""
    url = new_database()
    engine = get_engine(url)
    legacy_metadata(without=("audit_failed_callbacks",)).create_all(engine)
    seed(url, failed_callbacks=False)
    before = snapshot(url)
    migrate(engine)
    assert current_revision(engine) == head_revision()
    assert snapshot(url) == before
    assert shape(url) == shape(_created_by_the_revisions(new_database))


def test_the_data_teams_own_catalog_table_is_left_alone(new_database):
    """image_catalog may be the data team's table with other columns: neither created nor checked."""
    url = new_database()
    engine = get_engine(url)
    theirs = MetaData()
    Table(
        "image_catalog", theirs, Column("asset_key", String(64), primary_key=True), Column("feed", String(64))
    )
    theirs.create_all(engine)
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO image_catalog (asset_key, feed) VALUES ('a-1', 'cams')"))
    migrate(engine)  # a new warehouse beside their catalog
    columns = [c["name"] for c in inspect(engine).get_columns("image_catalog")]
    assert columns == ["asset_key", "feed"]
    assert {"audit_scans", "audit_results"} <= set(inspect(engine).get_table_names())

    legacy = get_engine(new_database())  # a legacy warehouse beside their catalog: adopted
    theirs.create_all(legacy)
    legacy_metadata(without=("image_catalog",)).create_all(legacy)
    migrate(legacy)
    assert current_revision(legacy) == head_revision()
    assert [c["name"] for c in inspect(legacy).get_columns("image_catalog")] == ["asset_key", "feed"]


def test_a_warehouse_whose_tables_differ_is_not_adopted(new_database):
    url = new_database()
    engine = get_engine(url)
    legacy_metadata().create_all(engine)
    with engine.begin() as conn:  # a table unlike the first revision's
        conn.execute(text("ALTER TABLE audit_scans DROP COLUMN last_error"))
    with pytest.raises(WarehouseSchemaError, match=r"audit_scans lacks last_error"):
        migrate(engine)
    assert current_revision(engine) is None
    assert VERSION_TABLE not in inspect(engine).get_table_names()  # nothing half-done


def _created_by_the_revisions(new_database) -> str:
    url = new_database()
    upgrade(get_engine(url))
    return url


# --- the check of the paths that only use the warehouse ---------------------------------------------


def test_require_current_names_the_command_unless_the_warehouse_is_at_head(new_database):
    behind = get_engine(new_database())
    upgrade(behind, FIRST_REVISION)
    with pytest.raises(WarehouseNotCurrent, match=f"revision {FIRST_REVISION}, behind") as raised:
        require_current(behind)
    assert UPGRADE_COMMAND in str(raised.value)
    assert (raised.value.current, raised.value.head) == (FIRST_REVISION, head_revision())
    assert current_revision(behind) == FIRST_REVISION  # the check changes nothing

    legacy = get_engine(new_database())
    legacy_metadata().create_all(legacy)
    with pytest.raises(WarehouseNotCurrent, match="before versioned migrations") as raised:
        require_current(legacy, create_empty=True)  # not empty: refused, not upgraded
    assert UPGRADE_COMMAND in str(raised.value) and current_revision(legacy) is None

    empty = get_engine(new_database())
    with pytest.raises(WarehouseNotCurrent, match="no image-audit tables") as raised:
        require_current(empty)
    assert UPGRADE_COMMAND in str(raised.value)
    require_current(empty, create_empty=True)  # nothing to lose: created
    assert current_revision(empty) == head_revision()

    for engine in (behind, legacy):
        upgrade(engine)
        require_current(engine)


def test_require_current_refuses_a_warehouse_a_newer_release_upgraded(new_database):
    engine = get_engine(new_database())
    upgrade(engine)
    with engine.begin() as conn:
        conn.execute(text(f"UPDATE {VERSION_TABLE} SET version_num = '9999'"))
    with pytest.raises(WarehouseNotCurrent, match="does not know") as raised:
        require_current(engine)
    assert f"downgrade {head_revision()}" in str(raised.value)
    with pytest.raises(WarehouseNotCurrent, match="does not know"):
        migrate(engine)  # nor moved by this code
    assert current_revision(engine) == "9999"


# --- the command line -------------------------------------------------------------------------------


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "image_audit.warehouse", *args],
        cwd=ROOT,
        env=dev_environment(env),
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_command_line_upgrades_a_warehouse_named_by_url(new_database):
    url = new_database()
    engine = get_engine(url)
    upgrade(engine, FIRST_REVISION)
    seed(url)
    before = snapshot(url)

    check = _cli("check", "--url", url)
    assert check.returncode == 1 and UPGRADE_COMMAND in check.stderr

    upgraded = _cli("upgrade", "--url", url)
    assert upgraded.returncode == 0, upgraded.stderr[-3000:]
    assert f"{FIRST_REVISION} -> {head_revision()} (head)" in upgraded.stdout
    steps = [(script.down_revision, script.revision) for script in _script().walk_revisions()][::-1]
    assert steps[0][0] is None and steps[-1][1] == head_revision()
    for down, up in steps[1:]:  # every revision after the first, in order
        assert f"Running upgrade {down} -> {up}" in upgraded.stderr
    assert mask_pixels(url) == {"scan-0": 30, "scan-1": 30}
    assert current_revision(engine) == head_revision() and snapshot(url) == before

    current = _cli("current", "--url", url)
    assert current.returncode == 0 and f"{head_revision()} (head)" in current.stdout
    assert _cli("check", "--url", url).returncode == 0


def test_the_command_line_upgrades_the_configured_warehouse(sqlite_warehouse_url):
    """Without --url: the warehouse the deployment is configured with (image_audit.config)."""
    engine = get_engine(sqlite_warehouse_url)
    downgrade(engine, FIRST_REVISION)
    upgraded = _cli("upgrade")
    assert upgraded.returncode == 0, upgraded.stderr[-3000:]
    assert current_revision(engine) == head_revision()
