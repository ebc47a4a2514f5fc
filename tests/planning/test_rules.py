"""The planner's rules, property-tested on SQLite and PostgreSQL.

Each example is a random night: a team catalog (valid rows; ids repeated, also only by surrounding
spaces; URLs repeated; bad rows of each kind; rows outside the interval or the source filter), the
scans earlier runs left (completed, failed, submitted, pending with and without a batch, timed out at
any attempt, rejected rows, another model's), and random options (caps, limit, source filter,
force_rescan, max_attempts, batch_size). ``plan_run`` plans the night; ``_expected`` writes out the
rules row by row, and the plan and the warehouse afterwards must be what they say. Then the same run
plans again, as a retried task does.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta

from hypothesis import event, example, given, settings
from hypothesis import strategies as st
from sqlalchemy import delete, select

from copyleaks_provider.scan_ids import make_rejection_id, make_scan_id, scan_id_stem
from image_audit.planning import PlanOptions, RunContext, RunPlan, plan_run
from image_audit.planning.catalog import row_rejection
from image_audit.planning.duplicates import DUPLICATE_ID, DUPLICATE_URL
from image_audit.planning.phases import batch_id
from image_audit.planning.run import CREDITS_PER_IMAGE
from image_audit.planning.tables import ADOPTIONS, ASKING, ATTEMPTS, Decision
from image_audit.planning.window import DEFERRED_BY_BUDGET, DEFERRED_BY_WINDOW
from image_audit.warehouse.lifecycle import ScanState
from image_audit.warehouse.schema import audit_batches, audit_scans
from tests.support.factories import DAG_ID, DAY, MODEL, new_scan

#: The model the runs ask for (an alias: scans are recorded with its full name, ``MODEL``).
ASKED_MODEL = "ai-image-1-ultra"
RUN = RunContext(DAG_ID, "scheduled__night", DAY, DAY + timedelta(days=1))
#: The images of every night: few, so rows and earlier scans meet.
IMAGES = [f"img-{n}" for n in range(6)]
LIVE = (ScanState.PENDING, ScanState.SUBMITTED)

# --- random nights ---------------------------------------------------------------------------------------

_image_ids = st.one_of(
    *[st.sampled_from(IMAGES)] * 4,
    st.sampled_from(IMAGES).map(lambda image: f" {image}"),  # the same image id once trimmed
    st.sampled_from(IMAGES).map(lambda image: f"{image} "),
    st.sampled_from([None, "", "  "]),  # missing
)
_good_urls = st.integers(0, 9).map(lambda n: f"https://cdn.example.com/{n}.jpg")  # some shared by rows
_urls = st.one_of(
    *[_good_urls] * 4,
    st.sampled_from(
        [
            None,  # missing
            " ",
            "ftp://cdn.example.com/a.jpg",  # not http(s)
            "https:///no-host.jpg",  # no host
            "https://cdn.example.com/animated.gif",  # an extension Copyleaks refuses
            "https://cdn.example.com/no-extension",
            "https://cdn.example.com/",  # no file name in the URL either
        ]
    ),
)
_file_names = st.sampled_from([None, None, None, "", "photo.png", "clip.gif", "noext"])
#: How an image's last attempt ended: its state, and whether it is in a batch (a pending scan without
#: one was deferred by a cap, or released: a leftover).
_OUTCOMES = [
    (ScanState.COMPLETED, True),
    (ScanState.FAILED, True),
    (ScanState.SUBMITTED, True),
    (ScanState.TIMED_OUT, True),
    (ScanState.PENDING, True),
    (ScanState.PENDING, False),
]


def _earlier_scan(
    image: str,
    attempt: int,
    state: ScanState,
    minute: int,
    *,
    scan_id: str | None = None,
    run_id: str = "scheduled__earlier",
    batched: bool = True,
    **columns,
) -> dict:
    """An earlier run's scan of ``image`` (``make_scan_id``'s unless ``scan_id``), created ``minute``
    minutes into the day before yesterday; ``columns`` override any other column."""
    earliest = DAY - timedelta(days=2)
    return (
        new_scan(
            scan_id or make_scan_id(image, MODEL, attempt),
            state,
            run_id=run_id,
            at=earliest + timedelta(minutes=minute),
            image_id=image,
            attempt=attempt,
            url=f"https://cdn.example.com/earlier/{image.strip()}.jpg",
            file_name=None,
            ingested_at=earliest,
            batch_id="b-earlier" if batched else None,
            last_error=None,
        )
        | columns
    )


@st.composite
def _catalog(draw, scanned: list[str]) -> list[dict]:
    """Catalog rows, each ingested at its own minute (so catalog order is ingestion order): random rows,
    most of them in the run's interval, and valid rows of some of the ``scanned`` images (earlier runs
    scanned them)."""
    again = draw(st.lists(st.sampled_from(scanned), unique=True)) if scanned else []
    count = draw(st.integers(2, 12))
    minutes = iter(draw(st.permutations(range(len(again) + count))))
    rows = []

    def row(image_id, url, file_name, day) -> None:
        rows.append(
            {
                "image_id": image_id,
                "url": url,
                "file_name": file_name,
                "source": draw(st.sampled_from(["stock", "partner-feed"])),
                "ingested_at": day + timedelta(minutes=next(minutes)),
                "fetch_headers_ref": None,
            }
        )

    for image in again:
        row(image, draw(_good_urls), draw(st.sampled_from([None, "photo.png"])), DAY)
    for _ in range(count):
        day = draw(st.sampled_from([DAY] * 4 + [DAY - timedelta(days=1), DAY + timedelta(days=1)]))
        row(draw(_image_ids), draw(_urls), draw(_file_names), day)
    return rows


@st.composite
def _earlier_scans(draw) -> list[dict]:
    """The scans earlier runs left: for some images a chain of attempts (the earlier ones timed out),
    rejected rows, and another model's scans. Each created at its own minute (the leftovers' order)."""
    created = iter(draw(st.permutations(range(40))))
    scans = []

    def scan(image: str, attempt: int, state: ScanState, **columns) -> None:
        run_id = draw(st.sampled_from(["scheduled__earlier", "backfill__earlier"]))
        file_name = draw(st.sampled_from([None, f"{image.strip()}.webp"]))
        scans.append(
            _earlier_scan(image, attempt, state, next(created), run_id=run_id, file_name=file_name, **columns)
        )

    for image in draw(st.lists(st.sampled_from([*IMAGES, " img-1"]), unique=True, min_size=1, max_size=6)):
        (outcome, batched), last = draw(st.sampled_from(_OUTCOMES)), draw(st.integers(1, 3))
        for attempt in range(1, last):
            scan(image, attempt, ScanState.TIMED_OUT)
        deferral = draw(st.sampled_from([None, f"{DEFERRED_BY_WINDOW} of 2 submissions is full"]))
        scan(image, last, outcome, batched=batched, last_error=None if batched else deferral)
        if draw(st.booleans()):  # a bad row of the image, rejected as attempt 1: never its scan
            url, reason = f"https://cdn.example.com/earlier/{image}.gif", "unsupported file extension '.gif'"
            reject_id = make_rejection_id(MODEL, image, url, "None", reason)
            scan(image, 1, ScanState.REJECTED, scan_id=reject_id, batched=False, last_error=reason)
    for image in draw(st.lists(st.sampled_from(IMAGES), unique=True, max_size=2)):
        another = f"{scan_id_stem(image, 'another-model')}-1"
        scan(image, 1, ScanState.PENDING, scan_id=another, model="another-model", batched=False)
    return scans


@st.composite
def _nights(draw) -> tuple[list[dict], list[dict]]:
    """The catalog rows and earlier runs' scans of a night."""
    earlier = draw(_earlier_scans())
    return draw(_catalog(sorted({scan["image_id"] for scan in earlier}))), earlier


def _a_night_of_every_decision() -> tuple[list[dict], list[dict]]:
    """A night with a scan for each decision: exhausted, waiting, retried, completed, in progress (the
    explicit examples plan it: random nights bring some of these together rarely)."""
    scans = [
        _earlier_scan("img-0", 1, ScanState.TIMED_OUT, 0),
        _earlier_scan("img-0", 2, ScanState.TIMED_OUT, 1),  # exhausted at max_attempts=2
        _earlier_scan("img-1", 1, ScanState.PENDING, 2, batched=False),  # waits for a run
        _earlier_scan("img-2", 1, ScanState.TIMED_OUT, 3),
        _earlier_scan("img-3", 1, ScanState.COMPLETED, 4),
        _earlier_scan("img-4", 1, ScanState.SUBMITTED, 5),
    ]
    rows = [
        {"image_id": image, "url": f"https://cdn.example.com/{n}.jpg", "file_name": None, "source": "stock",
         "ingested_at": DAY + timedelta(minutes=n), "fetch_headers_ref": None}
        for n, image in enumerate(["img-0", "img-3", "img-4", "img-5", " img-5"])
    ]  # fmt: skip
    return rows, scans


_caps = st.one_of(st.none(), st.integers(0, 3), st.integers(0, 8))  # small caps: often spent, often equal
_options = st.builds(
    PlanOptions,
    model=st.just(ASKED_MODEL),
    sandbox=st.booleans(),
    force_rescan=st.booleans(),
    batch_size=st.integers(1, 4),
    max_credits=_caps,
    max_submissions=_caps,
    max_attempts=st.integers(1, 3),
    source_filter=st.none() | st.just("stock"),
    limit=st.none() | st.integers(1, 12),
)


# --- the rules ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Work:
    """What the rules decide for an earlier run's leftover or an accepted catalog row."""

    image_id: str
    decision: Decision
    scan_id: str | None  # the scan it writes (NEW, RETRY) or adopts (ADOPT, RESUME)
    from_catalog: bool
    forced: bool = False  # a catalog row retrying its image's exhausted leftover (force_rescan)


@dataclass
class Expected:
    """The plan the rules make of a night."""

    rejected: dict[str, tuple[str, str]] = field(default_factory=dict)  # scan id -> (image id, reason)
    rejected_rows: int = 0
    work: list[Work] = field(default_factory=list)  # in planning order
    admitted: list[Work] = field(default_factory=list)
    deferred: list[Work] = field(default_factory=list)
    by_budget: bool = False

    def count(
        self, *decisions: Decision, admitted: bool | None = None, from_catalog: bool | None = None
    ) -> int:
        """How many of the work items (or of the admitted or deferred ones) have one of ``decisions``."""
        chosen = self.work if admitted is None else (self.admitted if admitted else self.deferred)
        return sum(
            work.decision in decisions and (from_catalog is None or work.from_catalog == from_catalog)
            for work in chosen
        )


def _is_leftover(scan: dict) -> bool:
    """An earlier run's scan a run takes over: pending without a batch, or timed out (to retry)."""
    unbatched = scan["state"] == ScanState.PENDING and scan["batch_id"] is None
    return scan["run_id"] != RUN.run_id and (unbatched or scan["state"] == ScanState.TIMED_OUT)


def _expected(rows: list[dict], earlier: list[dict], options: PlanOptions) -> Expected:
    expected = Expected()
    # The run's rows: its interval, its source, the first `limit` in catalog order.
    in_run = [
        row
        for row in sorted(rows, key=lambda row: row["ingested_at"])
        if RUN.interval_start <= row["ingested_at"] < RUN.interval_end
        and options.source_filter in (None, row["source"])
    ][: options.limit]
    # A bad row is rejected with its reason; of the valid rows sharing a trimmed id, or else a URL, with
    # an accepted row before them, the first wins and the others are rejected as its duplicates.
    accepted, ids, url_owners = [], set(), {}
    for row in in_run:
        image_id, url, file_name = row["image_id"], row["url"], row["file_name"]
        reason = row_rejection(image_id, url, file_name)
        if reason is None and str(image_id).strip() in ids:
            reason = DUPLICATE_ID
        elif reason is None and url in url_owners:
            reason = DUPLICATE_URL + url_owners[url]
        if reason is None:
            ids.add(image_id.strip())
            url_owners[url] = image_id.strip()
            accepted.append(row)
            continue
        expected.rejected_rows += 1
        reject_id = make_rejection_id(MODEL, str(image_id), str(url), str(file_name), reason)
        expected.rejected[reject_id] = (image_id or "", reason)
    # An image's scan is its latest attempt with the model; a rejected row never stands for it.
    scans = [scan for scan in earlier if scan["model"] == MODEL]
    latest: dict[str, dict] = {}
    for scan in sorted(scans, key=lambda scan: scan["attempt"]):
        if scan["state"] != ScanState.REJECTED:
            latest[scan["image_id"]] = scan

    def next_attempt(scan: dict, **flags) -> Work:
        new_id = make_scan_id(scan["image_id"], MODEL, scan["attempt"] + 1)
        return Work(scan["image_id"], Decision.RETRY, new_id, **flags)

    # Leftovers first, oldest first: a pending one is adopted with its id; a timed-out one gets a new
    # attempt below max_attempts, and is exhausted at it.
    for scan in sorted(filter(_is_leftover, scans), key=lambda scan: scan["created_at"]):
        if latest[scan["image_id"]] is not scan:
            continue  # a later attempt stands for the image
        if scan["state"] == ScanState.PENDING:
            expected.work.append(Work(scan["image_id"], Decision.ADOPT, scan["scan_id"], False))
        elif scan["attempt"] >= options.max_attempts:
            expected.work.append(Work(scan["image_id"], Decision.EXHAUSTED, None, False))
        else:
            expected.work.append(next_attempt(scan, from_catalog=False))
    # Then the accepted rows, in catalog order.
    for row in accepted:
        scan = latest.get(row["image_id"])
        if scan is None:
            work = Work(row["image_id"], Decision.NEW, make_scan_id(row["image_id"], MODEL, 1), True)
        elif _is_leftover(scan):
            exhausted = scan["state"] == ScanState.TIMED_OUT and scan["attempt"] >= options.max_attempts
            if not (exhausted and options.force_rescan):
                continue  # its leftover decided it
            work = next_attempt(scan, from_catalog=True, forced=True)
        elif scan["state"] in LIVE:
            work = Work(row["image_id"], Decision.IN_PROGRESS, None, True)
        elif options.force_rescan:
            work = next_attempt(scan, from_catalog=True)
        else:  # completed or failed
            work = Work(row["image_id"], Decision.SCANNED, None, True)
        expected.work.append(work)
    # The caps: the first `cap` scans that ask for a credit and a submission, in planning order.
    budget = None if options.max_credits is None else max(options.max_credits // CREDITS_PER_IMAGE, 0)
    window = None if options.max_submissions is None else max(options.max_submissions, 0)
    cap = min((limit for limit in (budget, window) if limit is not None), default=None)
    asking = [work for work in expected.work if work.decision in ASKING]
    expected.admitted, expected.deferred = asking[:cap], asking[len(asking[:cap]) :]
    expected.by_budget = budget is not None and (window is None or budget <= window)
    return expected


def _deferral(options: PlanOptions, by_budget: bool) -> str:
    if by_budget:
        return f"{DEFERRED_BY_BUDGET} of {options.max_credits} credits"
    return f"{DEFERRED_BY_WINDOW} of {options.max_submissions} submissions"


# --- the warehouse ---------------------------------------------------------------------------------------
def _fill(engine, team_catalog, rows: list[dict], earlier: list[dict]) -> None:
    """An empty warehouse holding just this night's catalog and earlier scans."""
    with engine.begin() as conn:
        for table in (audit_scans, audit_batches, team_catalog.table):
            conn.execute(delete(table))
        if rows:
            conn.execute(team_catalog.table.insert(), rows)
        if earlier:
            conn.execute(audit_scans.insert(), earlier)


def _warehouse(engine) -> tuple[dict[str, dict], dict[str, dict]]:
    """Every scan and every batch, by id."""
    with engine.connect() as conn:
        scans = {row["scan_id"]: dict(row) for row in conn.execute(select(audit_scans)).mappings()}
        batches = {row["batch_id"]: dict(row) for row in conn.execute(select(audit_batches)).mappings()}
    return scans, batches


# --- the tests -------------------------------------------------------------------------------------------
_EVERY_DECISION = _a_night_of_every_decision()


@settings(settings.get_profile("planning"))
@given(night=_nights(), options=_options)
@example(  # both caps spent by the first leftover: the retries (a forced one too) and new rows wait
    night=_EVERY_DECISION,
    options=PlanOptions(
        ASKED_MODEL, force_rescan=True, batch_size=1, max_credits=1, max_submissions=1, max_attempts=2
    ),
)
@example(
    night=_EVERY_DECISION, options=PlanOptions(ASKED_MODEL, batch_size=2, max_submissions=3, max_attempts=2)
)
def test_a_plan_follows_the_rules(engine, team_catalog, night, options):
    """Every rule at once, on a random night; and again when the same run plans again."""
    rows, earlier = night
    _fill(engine, team_catalog, rows, earlier)
    before, _ = _warehouse(engine)
    plan = plan_run(engine, team_catalog.spec, RUN, options)
    scans, batches = _warehouse(engine)
    expected = _expected(rows, earlier, options)

    for decision in sorted({work.decision for work in expected.work}):  # --hypothesis-show-statistics
        event(f"decided {decision}")
    event(f"forced retry: {any(work.forced for work in expected.work)}")
    event(f"deferred: {bool(expected.deferred)}")
    _every_row_has_one_decision(plan, expected, before, scans)
    _no_image_is_planned_twice(scans)
    _earlier_scans_change_only_when_adopted_or_deferred(expected, options, before, scans)
    _the_caps_admit_exactly_and_the_rest_waits(plan, expected, options, scans)
    _batches_fill_in_planning_order(plan, expected, options, scans, batches)
    _planning_again_is_idempotent(engine, team_catalog, options, plan, expected, scans, batches)


#: Few ids (some only differing by surrounding spaces) and URLs, so rows collide in chains.
_colliding_rows = st.fixed_dictionaries(
    {
        "image_id": st.sampled_from(["a", "b", "c", " a", "b ", None]),
        "url": st.sampled_from(["https://h/1.jpg", "https://h/2.jpg", "https://h/3.jpg", "ftp://h/4.jpg"]),
        "file_name": st.sampled_from([None, "x.png"]),
        "source": st.just("stock"),
        "fetch_headers_ref": st.none(),
    }
)


@settings(settings.get_profile("planning"))
@given(rows=st.lists(_colliding_rows, max_size=10))
def test_in_any_chain_of_duplicates_the_first_valid_row_wins(engine, team_catalog, rows):
    """Rows sharing a trimmed id, or else a URL, with an accepted row before them are rejected as its
    duplicates, in chains of any length: a row that only collides with rejected rows is accepted."""
    for minute, row in enumerate(rows):
        row["ingested_at"] = DAY + timedelta(minutes=minute)
    _fill(engine, team_catalog, rows, [])
    options = PlanOptions(model=ASKED_MODEL)
    plan = plan_run(engine, team_catalog.spec, RUN, options)
    _every_row_has_one_decision(plan, _expected(rows, [], options), {}, _warehouse(engine)[0])


def _every_row_has_one_decision(plan: RunPlan, expected: Expected, before: dict, scans: dict) -> None:
    """Each run row is rejected (its reason recorded), or its image gets exactly its decision: a new
    attempt with its deterministic id, an adoption, or a count of what is skipped."""
    rejected = {
        scan_id: (scan["image_id"], scan["last_error"])
        for scan_id, scan in scans.items()
        if scan["state"] == ScanState.REJECTED and scan["run_id"] == RUN.run_id
    }
    assert rejected == expected.rejected
    assert plan.rejected == expected.rejected_rows
    attempts = {work.scan_id for work in expected.work if work.decision in ATTEMPTS}
    assert set(scans) - set(before) == attempts | set(expected.rejected)
    for scan_id in attempts:
        scan = scans[scan_id]
        assert scan["state"] == ScanState.PENDING and scan["run_id"] == RUN.run_id
        assert scan_id == make_scan_id(scan["image_id"], ASKED_MODEL, scan["attempt"])
    counts = {
        "new": expected.count(Decision.NEW),
        # a catalog row's retry counts as decided; a leftover's once admitted (deferred, it waits)
        "retried": expected.count(Decision.RETRY, from_catalog=True)
        + expected.count(Decision.RETRY, admitted=True, from_catalog=False),
        "resumed": expected.count(*ADOPTIONS, admitted=True),
        "in_progress": expected.count(Decision.IN_PROGRESS),
        "already_scanned": expected.count(Decision.SCANNED),
        # an exhausted leftover that its catalog row retries (force_rescan) is not exhausted
        "exhausted": expected.count(Decision.EXHAUSTED) - sum(work.forced for work in expected.work),
    }
    assert {key: getattr(plan, key) for key in counts} == counts


def _no_image_is_planned_twice(scans: dict) -> None:
    """At most one live scan (pending or submitted) of an image with the model."""
    live = [scan["image_id"] for scan in scans.values() if scan["model"] == MODEL and scan["state"] in LIVE]
    assert len(live) == len(set(live)), sorted(live)


def _earlier_scans_change_only_when_adopted_or_deferred(
    expected: Expected, options: PlanOptions, before: dict, scans: dict
) -> None:
    """An adopted scan moves to this run with its id; a leftover that waits says why; every other
    earlier scan (completed, failed, in progress, exhausted, another model's) is left as it was."""
    adopted = {work.scan_id for work in expected.admitted if work.decision in ADOPTIONS}
    waiting = {work.scan_id for work in expected.deferred if work.decision in ADOPTIONS}
    for scan_id, earlier in before.items():
        scan = scans[scan_id]
        if scan_id in adopted:
            assert scan["run_id"] == RUN.run_id and scan["batch_id"] and scan["last_error"] is None
        elif scan_id in waiting:
            assert scan["run_id"] == earlier["run_id"] and scan["batch_id"] is None
            assert scan["last_error"].startswith(_deferral(options, expected.by_budget))
        else:
            assert scan == earlier


def _the_caps_admit_exactly_and_the_rest_waits(
    plan: RunPlan, expected: Expected, options: PlanOptions, scans: dict
) -> None:
    """Exactly the first scans that fit the caps (leftovers first, oldest first, then catalog order) get
    a batch; the others stay pending without one, with the cap that holds them back as the reason."""
    batched = {scan_id for scan_id, scan in scans.items() if scan["batch_id"] in plan.batch_ids}
    assert batched == {work.scan_id for work in expected.admitted}
    deferred_by = "deferred_by_budget" if expected.by_budget else "deferred_by_window"
    other = "deferred_by_window" if expected.by_budget else "deferred_by_budget"
    assert (getattr(plan, deferred_by), getattr(plan, other)) == (len(expected.deferred), 0)
    for work in expected.deferred:
        scan = scans[work.scan_id]
        assert scan["state"] == ScanState.PENDING and scan["batch_id"] is None
        assert scan["last_error"].startswith(_deferral(options, expected.by_budget))


def _batches_fill_in_planning_order(
    plan: RunPlan, expected: Expected, options: PlanOptions, scans: dict, batches: dict
) -> None:
    """The admitted scans, in planning order, cut into batches of ``batch_size``: the plan lists them
    all, each records its size, and the run has no other batch."""
    in_order = [work.scan_id for work in expected.admitted]
    cuts = [
        in_order[start : start + options.batch_size] for start in range(0, len(in_order), options.batch_size)
    ]
    by_batch: dict[str, set[str]] = {}
    for scan_id in in_order:
        by_batch.setdefault(scans[scan_id]["batch_id"], set()).add(scan_id)
    assert list(by_batch.values()) == [set(cut) for cut in cuts]
    assert list(by_batch) == [batch_id(RUN, cut[0]) for cut in cuts]  # named after their first scans
    assert plan.batch_ids == sorted(by_batch) and plan.planned == len(in_order)
    assert {batch_id for batch_id, batch in batches.items() if batch["run_id"] == RUN.run_id} == set(by_batch)
    assert all(batches[batch_id]["size"] == len(ids) for batch_id, ids in by_batch.items())


def _planning_again_is_idempotent(
    engine, team_catalog, options: PlanOptions, plan: RunPlan, expected: Expected, scans: dict, batches: dict
) -> None:
    """The same run planned again (a retried task) writes no new scan and keeps every batch. With
    nothing deferred it is the same plan and changes nothing; what the caps deferred is offered to the
    caps again (each planning has the run's caps), and nothing else is."""
    again = plan_run(engine, team_catalog.spec, RUN, options)
    scans_again, batches_again = _warehouse(engine)
    assert set(scans_again) == set(scans)
    assert set(plan.batch_ids) <= set(again.batch_ids)
    assert again.new == again.retried == 0
    for scan_id, scan in scans.items():
        if scan["batch_id"] in plan.batch_ids:
            assert scans_again[scan_id]["batch_id"] == scan["batch_id"]
    if not expected.deferred:
        assert (again.batch_ids, again.planned, again.resumed) == (plan.batch_ids, plan.planned, 0)
        assert (scans_again, batches_again) == (scans, batches)
    newly_batched = {
        scan_id
        for scan_id, scan in scans_again.items()
        if scan["batch_id"] in set(again.batch_ids) - set(plan.batch_ids)
    }
    assert newly_batched <= {work.scan_id for work in expected.deferred}
