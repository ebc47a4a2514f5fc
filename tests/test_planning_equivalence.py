"""The set-based planner against the row-at-a-time one it replaced (``tests/planning_reference.py``).

Randomized catalogs (duplicates by id and by URL, bad rows, images scanned by earlier runs, timed-out
scans, leftovers, credit budgets, window caps, several batch sizes, reruns and backfills) are planned
night after night on two warehouses, one per planner, with the same scans completing, failing or timing
out on both in between. After every plan both must hold the same ``audit_scans`` rows (every column but
the clock's: scan id, state, attempt, batch, reason...), the same ``audit_batches`` and return the same
``RunPlan``.

Intended differences (the reference carries them, marked ``DIFFERENCE n``):
1. An image's latest attempt is never a rejected row. The old planner took the highest attempt among
   the image's rows that are not rejected, then joined back on (image, model, attempt) alone: a row
   rejected with the same attempt number (a duplicate or bad catalog row of the image, rejected as
   attempt 1) could stand in for the real scan, by row order, and the image then counted as already
   scanned, its timed-out scan never retried.
2. All the rows one plan writes have the same ``created_at`` (the plan's time), and leftovers are ordered
   by (``created_at``, ``ingested_at``, image id, scan id): one plan's leftovers drain in catalog order,
   not in the order of the microseconds their rows happened to be inserted at.
3. A batch is named after its first scan; when that scan is a new attempt whose id is taken (Copyleaks
   refused it: its row is ``rejected`` and stays), a rerun of the plan names a batch after it again.
   The old planner then failed on the batch's primary key, every time; the new one adds to that batch.
Not visible here: the old planner committed every 2,000 catalog rows; the new one decides and writes in
one transaction, so a crash leaves nothing half planned.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit

import pytest
from sqlalchemy import Column, DateTime, MetaData, String, Table, Text, select, update

from copyleaks_provider.exceptions import CopyleaksValidationError
from copyleaks_provider.validation import validate_file_name, validate_image_url
from image_audit import planning
from image_audit.planning import PlanOptions, RunContext
from image_audit.planning.catalog import CatalogSpec, row_rejection
from image_audit.warehouse.engine import dispose_engines, get_engine
from image_audit.warehouse.lifecycle import ScanState
from image_audit.warehouse.progress import release_unsubmitted
from image_audit.warehouse.schema import audit_batches, audit_scans, migrate
from tests import planning_reference
from tests.conftest import _new_sqlite_url, requires_postgres

DAY = datetime(2026, 11, 2, tzinfo=UTC)
MODEL = "ai-image-1-ultra"
DAG = "image_catalog_audit"
#: The data team's own table: no primary key, so one image id may stand in several rows.
CATALOG = Table(
    "team_catalog",
    MetaData(),
    Column("image_id", String(255)),
    Column("url", Text),
    Column("file_name", String(255)),
    Column("source", String(255)),
    Column("ingested_at", DateTime(timezone=True), nullable=False),
    Column("fetch_headers_ref", String(255)),
)
SPEC = CatalogSpec(table="team_catalog")
#: URLs the hook refuses, or that only the full parser accepts.
ODD_URLS = [
    None,
    "",
    "   ",
    "ftp://files.example.com/a.jpg",
    "https:///no-host.jpg",
    "https://cdn.example.com/animated.gif",
    "https://cdn.example.com/no-extension",
    " https://cdn.example.com/leading-space.jpg",
    "HTTPS://CDN.example.com/upper.PNG",
    "https://user@cdn.example.com:8443/with-user.webp",
    "https://cdn.example.com:/empty-port.jpg",
    "//cdn.example.com/no-scheme.jpg",
]


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=[pytest.mark.postgres, requires_postgres])])
def twins(request, tmp_path):
    """Two empty warehouses with the team's catalog table: one for each planner."""
    urls = []
    for _ in range(2):
        if request.param == "sqlite":
            urls.append(_new_sqlite_url(tmp_path))
        else:
            urls.append(request.getfixturevalue("postgres_databases").create())
    engines = [get_engine(url) for url in urls]
    for engine in engines:
        migrate(engine)
        CATALOG.create(engine)
    yield engines
    dispose_engines()
    if request.param == "postgres":
        for url in urls:
            request.getfixturevalue("postgres_databases").drop(url)


def _night(rng: random.Random, day: datetime, count: int, pool: int) -> list[dict]:
    """``count`` catalog rows ingested on ``day``: images of a pool shared by every night (so images come
    back), duplicates by id and by URL, ties on ingestion time, and bad rows."""
    rows, keys = [], set()
    for _ in range(count):
        number = rng.randrange(pool)
        image_id = f"img-{number:03d}"
        roll = rng.random()
        if roll < 0.05:
            image_id = f" {image_id}"  # the same id once trimmed
        elif roll < 0.08:
            image_id = rng.choice([None, "", "  "])
        url_number = number if rng.random() < 0.8 else rng.randrange(pool)  # another image's URL
        extension = rng.choice(["jpg", "png", "webp", "jpeg"])
        url = f"https://cdn.example.com/{url_number:03d}.{extension}"
        if rng.random() < 0.1:
            url = rng.choice(ODD_URLS)
        file_name = rng.choice([None, "", url.rsplit("/", 1)[-1] if url else "x.jpg", "renamed.png", "noext"])
        if rng.random() < 0.5:
            file_name = None if rng.random() < 0.3 else (url or "x.jpg").rsplit("/", 1)[-1]
        ingested_at = day + timedelta(minutes=rng.randrange(30))  # ties: ordered by id, URL, file name
        key = (ingested_at, image_id, url, file_name)
        if key in keys:
            continue  # rows alike in all the catalog order sorts by
        keys.add(key)
        rows.append(
            {
                "image_id": image_id,
                "url": url,
                "file_name": file_name,
                "source": rng.choice(["partner-feed", "stock"]),
                "ingested_at": ingested_at,
                "fetch_headers_ref": rng.choice([None, "headers/a"]),
            }
        )
    return rows


def _options(rng: random.Random, count: int) -> PlanOptions:
    def cap():
        return rng.choice([None, None, 0, rng.randrange(count + 2)])

    return PlanOptions(
        model=MODEL,
        sandbox=rng.random() < 0.5,
        force_rescan=rng.random() < 0.1,
        batch_size=rng.choice([1, 2, 5, 1000]),
        max_credits=cap(),
        max_submissions=cap(),
        max_attempts=rng.choice([1, 2, 3]),
        source_filter="stock" if rng.random() < 0.1 else None,
        limit=rng.randrange(1, count + 2) if rng.random() < 0.1 else None,
    )


def _state(engine) -> tuple[list, list]:
    """Every scan and batch, without the clock's columns."""
    clock = {"created_at", "updated_at"}
    columns = [c for c in audit_scans.columns if c.name not in clock]
    with engine.connect() as conn:
        scans = conn.execute(select(*columns).order_by(audit_scans.c.scan_id)).all()
        b = audit_batches.c
        batches = conn.execute(select(b.batch_id, b.dag_id, b.run_id, b.size).order_by(b.batch_id)).all()
    return [tuple(row) for row in scans], [tuple(row) for row in batches]


def _plan_both(engines, run: RunContext, options: PlanOptions) -> planning.RunPlan:
    old_engine, new_engine = engines
    expected = planning_reference.plan_run(old_engine, SPEC, run, options)
    got = planning.plan_run(new_engine, SPEC, run, options)
    assert got == expected, (run, options)
    old_scans, old_batches = _state(old_engine)
    new_scans, new_batches = _state(new_engine)
    only_new, only_old = _differences(new_scans, old_scans)
    assert not only_new and not only_old, f"{run} {options}\nnew: {only_new}\nold: {only_old}"
    assert _differences(new_batches, old_batches) == ([], []), (run, options)
    return got


def _differences(new: list[tuple], old: list[tuple]) -> tuple[list, list]:
    """The rows only the new planner wrote, and those only the reference wrote."""
    return [row for row in new if row not in old], [row for row in old if row not in new]


def _outcomes(engines, rng: random.Random, run_id: str) -> None:
    """What happens to a run's batched scans after planning, the same on both warehouses."""
    with engines[0].connect() as conn:
        scans = conn.execute(
            select(audit_scans.c.scan_id)
            .where(audit_scans.c.run_id == run_id, audit_scans.c.state == ScanState.PENDING.value)
            .where(audit_scans.c.batch_id.is_not(None))
            .order_by(audit_scans.c.scan_id)
        ).scalars().all()  # fmt: skip
    states = [None, "submitted", "completed", "completed", "completed", "failed", "timed_out", "timed_out"]
    changes = {
        scan_id: rng.choice([*states, "rejected"] if rng.random() < 0.1 else states) for scan_id in scans
    }
    release = rng.random() < 0.3
    for engine in engines:
        with engine.begin() as conn:
            for scan_id, state in changes.items():
                if state:
                    conn.execute(
                        update(audit_scans).where(audit_scans.c.scan_id == scan_id).values(state=state)
                    )
        if release:  # the run ended before submitting the rest: a later run adopts them
            release_unsubmitted(engine, DAG, run_id)


@pytest.mark.parametrize("seed", range(12))
def test_randomized_nights_plan_the_same(twins, seed):
    rng = random.Random(seed)
    pool = rng.choice([15, 40, 80])
    runs: list[tuple[str, datetime]] = []
    for night in range(7):
        day = DAY + timedelta(days=night)
        rows = _night(rng, day, rng.randrange(0, 70), pool)
        for engine in twins:
            if rows:
                with engine.begin() as conn:
                    conn.execute(CATALOG.insert(), rows)
        run_id, interval = f"scheduled__{day:%Y-%m-%d}", day
        if runs and rng.random() < 0.2:  # a backfill of an earlier night, as a run of its own
            run_id, interval = f"backfill__{night}", rng.choice(runs)[1]
        runs.append((run_id, interval))
        run = RunContext(DAG, run_id, interval, interval + timedelta(days=1))
        _plan_both(twins, run, _options(rng, len(rows)))
        if rng.random() < 0.25:  # the plan task retried, or the run cleared: the same run plans again
            _plan_both(twins, run, _options(rng, len(rows)))
        _outcomes(twins, rng, run_id)


def test_thousands_of_rows_cross_the_old_planners_blocks(twins):
    """Adoptions and new attempts across the row-at-a-time planner's blocks (1,000 leftovers, 2,000
    catalog rows), where it placed adoptions after the new attempts of their block."""
    rng = random.Random(7)
    first = _night(rng, DAY, 4_000, pool=20_000)
    for engine in twins:
        with engine.begin() as conn:
            conn.execute(CATALOG.insert(), first)
    run = RunContext(DAG, "run-1", DAY, DAY + timedelta(days=1))
    _plan_both(twins, run, PlanOptions(model=MODEL, batch_size=7, max_submissions=900))
    _outcomes(twins, rng, "run-1")
    # the same run again: the rows it deferred are its own pending scans, resumed from the catalog
    again = _plan_both(twins, run, PlanOptions(model=MODEL, batch_size=7, max_submissions=600))
    assert again.resumed and again.retried and again.in_progress and again.deferred_by_window > 1_000, again
    _outcomes(twins, rng, "run-1")
    second_day = DAY + timedelta(days=1)
    second = _night(rng, second_day, 800, pool=20_000)
    for engine in twins:
        with engine.begin() as conn:
            conn.execute(CATALOG.insert(), second)
    # the next night: more than 1,000 leftovers (pending and timed out) first, then its own rows
    later = RunContext(DAG, "run-2", second_day, second_day + timedelta(days=1))
    options = PlanOptions(model=MODEL, batch_size=13, max_credits=1_700, max_attempts=2)
    plan = _plan_both(twins, later, options)
    assert plan.resumed > 1_000 and plan.retried and plan.new and plan.deferred_by_budget, plan


def test_the_row_check_is_the_hooks_validators():
    """``row_rejection`` skips parsing URLs that are plainly http(s) with a host: it must say what the
    hook's validators say (the old ``rejection_reason``) for any URL."""

    def validators(image_id, url, file_name):
        if not image_id or not str(image_id).strip():
            return "missing image id"
        if not url or not url.strip():
            return "missing URL"
        try:
            validate_image_url(url)
            validate_file_name(file_name or urlsplit(url or "").path.rsplit("/", 1)[-1])
        except CopyleaksValidationError as exc:
            return str(exc)
        return None

    rng = random.Random(18)
    alphabet = "hHtTpPsS:/.@[]?#%-_~ \t\n0123456789abcxyzé\u017f\u212a" + "jpgnJPGN"
    urls = [u for u in ODD_URLS if u] + [
        "https://cdn.example.com/a.jpg",
        "http://h/x.JPG",
        "https://h:80/x.png?y=1#z",
        "https://h?x.png",
        "https://h#x.png",
        "https://h",
        "https://[::1]/x.png",
        "https://h\t/x.png",
        "https://h\n.example/x.png",
        "https://\u017f/x.png",  # long s: not an ASCII letter
        "https://h/x.pn\u017f",
    ]
    urls += ["".join(rng.choice(alphabet) for _ in range(rng.randrange(4, 24))) for _ in range(3_000)]
    urls += [
        "https://" + "".join(rng.choice(alphabet) for _ in range(rng.randrange(1, 16))) for _ in range(3_000)
    ]
    for url in urls:
        for file_name in (None, "", "a.jpg", "b.gif"):
            try:
                expected = validators("img-1", url, file_name)
            except ValueError:  # urlsplit refuses it: so must the row check
                with pytest.raises(ValueError):
                    row_rejection("img-1", url, file_name)
                continue
            assert row_rejection("img-1", url, file_name) == expected, (url, file_name)
