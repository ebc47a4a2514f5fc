"""Planning a run: which catalog images this run submits, which it rejects and why, and the batches.

Every decision is recorded in ``audit_scans`` before anything is sent, so a retried or rerun task
finds the same plan and never submits an image twice by accident:
- an image already scanned with the model is skipped (unless ``force_rescan``);
- a scan left ``pending`` without a batch (the budget guard deferred it, or its run ended before
  submitting it) is adopted by this run with the same scan id;
- a ``timed_out`` scan gets a new attempt (a new scan id), up to ``max_attempts``;
- a bad row is stored as ``rejected`` with its reason, so the report shows it.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from itertools import islice

from sqlalchemy import Engine, and_, func, select, update
from sqlalchemy.dialects import postgresql, sqlite

from copyleaks_provider.scan_ids import canonical_model, make_rejection_id, make_scan_id
from image_audit.catalog import CatalogRow, CatalogSpec, file_name_of, read_catalog, rejection_reason
from image_audit.warehouse.schema import ScanState, audit_batches, audit_scans

log = logging.getLogger(__name__)

#: Credits Copyleaks charges for one image scan (``expectedCredits`` of the response).
CREDITS_PER_IMAGE = 1


@dataclass(frozen=True)
class RunContext:
    dag_id: str
    run_id: str
    interval_start: datetime
    interval_end: datetime


@dataclass(frozen=True)
class PlanOptions:
    model: str
    sandbox: bool = False
    force_rescan: bool = False
    batch_size: int = 1000
    max_credits: int | None = None
    max_attempts: int = 3
    source_filter: str | None = None
    limit: int | None = None


@dataclass
class RunPlan:
    """What planning decided; small enough for XCom and the task log."""

    batch_ids: list[str] = field(default_factory=list)
    planned: int = 0
    new: int = 0
    resumed: int = 0
    retried: int = 0
    rejected: int = 0
    already_scanned: int = 0
    in_progress: int = 0
    deferred_by_budget: int = 0
    exhausted: int = 0

    def as_dict(self) -> dict:
        return asdict(self)


def _now() -> datetime:
    return datetime.now(UTC)


def _insert(engine: Engine):
    dialect = postgresql if engine.dialect.name == "postgresql" else sqlite
    return dialect.insert(audit_scans)


def _chunks(items: Iterable, size: int) -> Iterator[list]:
    iterator = iter(items)
    while chunk := list(islice(iterator, size)):
        yield chunk


class _Planner:
    def __init__(self, engine: Engine, run: RunContext, options: PlanOptions):
        self.engine = engine
        self.run = run
        self.options = options
        self.model = canonical_model(options.model)
        self.plan = RunPlan()
        self.batches = _Batcher(run, options.batch_size)
        self.seen_ids: set[str] = set()
        self.seen_urls: dict[str, str] = {}
        self.budget = options.max_credits

    # --- rows -------------------------------------------------------------------------------------
    def _scan_row(self, scan_id: str, row: CatalogRow, *, state: ScanState, attempt: int, error=None):
        now = _now()
        return {
            "scan_id": scan_id,
            "image_id": str(row.image_id or ""),
            "model": self.model,
            "attempt": attempt,
            "state": state.value,
            "url": row.url,
            "file_name": file_name_of(row) if row.url else row.file_name,
            "source": row.source,
            "ingested_at": row.ingested_at,
            "fetch_headers_ref": row.fetch_headers_ref,
            "batch_id": None,
            "dag_id": self.run.dag_id,
            "run_id": self.run.run_id,
            "data_interval_start": self.run.interval_start,
            "data_interval_end": self.run.interval_end,
            "sandbox": self.options.sandbox,
            "expected_credits": CREDITS_PER_IMAGE,
            "created_at": now,
            "updated_at": now,
            "last_error": error,
        }

    def _latest_scans(self, conn, image_ids: list[str]) -> dict[str, dict]:
        """The latest attempt per image (with this model) among ``image_ids``."""
        latest = (
            select(audit_scans.c.image_id, func.max(audit_scans.c.attempt).label("attempt"))
            .where(audit_scans.c.image_id.in_(image_ids), audit_scans.c.model == self.model)
            .where(audit_scans.c.state != ScanState.REJECTED.value)
            .group_by(audit_scans.c.image_id)
            .subquery()
        )
        query = select(audit_scans).join(
            latest,
            and_(
                audit_scans.c.image_id == latest.c.image_id,
                audit_scans.c.attempt == latest.c.attempt,
                audit_scans.c.model == self.model,
            ),
        )
        return {r["image_id"]: dict(r) for r in conn.execute(query).mappings()}

    def _new_attempt(self, row: CatalogRow, attempt: int) -> dict:
        scan_id = make_scan_id(str(row.image_id), self.model, attempt)
        return self._scan_row(scan_id, row, state=ScanState.PENDING, attempt=attempt)

    def _take_budget(self) -> bool:
        if self.budget is None:
            return True
        if self.budget < CREDITS_PER_IMAGE:
            return False
        self.budget -= CREDITS_PER_IMAGE
        return True

    def _reject(self, row: CatalogRow, reason: str) -> dict:
        self.plan.rejected += 1
        scan_id = make_rejection_id(self.model, str(row.image_id), str(row.url), str(row.file_name), reason)
        return self._scan_row(scan_id, row, state=ScanState.REJECTED, attempt=1, error=reason)

    def plan_chunk(self, conn, rows: list[CatalogRow]) -> None:
        inserts: list[dict] = []
        adopt: list[str] = []
        valid: list[CatalogRow] = []
        for row in rows:
            reason = rejection_reason(row)
            image_id = str(row.image_id).strip() if row.image_id is not None else ""
            if reason is None and image_id in self.seen_ids:
                reason = "duplicate image id in this interval"
            if reason is None and row.url in self.seen_urls:
                reason = f"duplicate URL: same image as {self.seen_urls[row.url]}"
            if reason:
                inserts.append(self._reject(row, reason))
                continue
            self.seen_ids.add(image_id)
            self.seen_urls[row.url] = image_id
            valid.append(row)

        latest = self._latest_scans(conn, [str(r.image_id) for r in valid]) if valid else {}
        for row in valid:
            previous = latest.get(str(row.image_id))
            attempt = 1
            if previous is not None:
                state = ScanState(previous["state"])
                if state == ScanState.PENDING and previous["batch_id"] is None:
                    if self._take_budget():
                        adopt.append(previous["scan_id"])
                        self.plan.resumed += 1
                    else:
                        self.plan.deferred_by_budget += 1
                    continue
                if state in (ScanState.PENDING, ScanState.SUBMITTED):
                    self.plan.in_progress += 1  # owned by a run that is still working on it
                    continue
                if state == ScanState.COMPLETED and not self.options.force_rescan:
                    self.plan.already_scanned += 1
                    continue
                if state in (ScanState.FAILED, ScanState.REJECTED) and not self.options.force_rescan:
                    self.plan.already_scanned += 1
                    continue
                exhausted = previous["attempt"] >= self.options.max_attempts
                if state == ScanState.TIMED_OUT and exhausted and not self.options.force_rescan:
                    self.plan.exhausted += 1
                    continue
                attempt = previous["attempt"] + 1
                self.plan.retried += 1
            else:
                self.plan.new += 1
            scan = self._new_attempt(row, attempt)
            if self._take_budget():
                scan["batch_id"] = self.batches.place(conn, scan["scan_id"])
            else:
                self.plan.deferred_by_budget += 1
                scan["last_error"] = (
                    f"deferred: the run's budget of {self.options.max_credits} credits is spent"
                )
            inserts.append(scan)

        if inserts:
            statement = _insert(self.engine)
            conn.execute(statement.on_conflict_do_nothing(index_elements=["scan_id"]), inserts)
        self.batches.adopt(conn, adopt)

    def adopt_leftovers(self, conn) -> None:
        """Scans earlier runs left behind: unbatched ``pending`` ones, and ``timed_out`` ones to retry."""
        query = (
            select(audit_scans)
            .where(audit_scans.c.model == self.model, audit_scans.c.run_id != self.run.run_id)
            .where(
                ((audit_scans.c.state == ScanState.PENDING.value) & audit_scans.c.batch_id.is_(None))
                | (audit_scans.c.state == ScanState.TIMED_OUT.value)
            )
            .order_by(audit_scans.c.created_at)
        )
        for leftovers in _chunks(conn.execute(query).mappings(), 1000):
            image_ids = [r["image_id"] for r in leftovers]
            latest = self._latest_scans(conn, image_ids)
            adopted: list[str] = []
            retries: list[dict] = []
            for scan in leftovers:
                if scan["image_id"] in self.seen_ids:
                    continue  # this interval's own catalog row decided already
                if latest.get(scan["image_id"], {}).get("scan_id") != scan["scan_id"]:
                    continue  # a later attempt exists
                self.seen_ids.add(scan["image_id"])
                row = CatalogRow(
                    scan["image_id"], scan["url"], scan["file_name"], scan["source"],
                    scan["ingested_at"], scan["fetch_headers_ref"],
                )  # fmt: skip
                if scan["state"] == ScanState.PENDING.value:
                    if self._take_budget():
                        adopted.append(scan["scan_id"])
                        self.plan.resumed += 1
                    else:
                        self.plan.deferred_by_budget += 1
                    continue
                if scan["attempt"] >= self.options.max_attempts:
                    self.plan.exhausted += 1
                    continue
                if not self._take_budget():
                    self.plan.deferred_by_budget += 1
                    continue
                attempt = scan["attempt"] + 1
                new = self._new_attempt(row, attempt)
                new["batch_id"] = self.batches.place(conn, new["scan_id"])
                retries.append(new)
                self.plan.retried += 1
            if retries:
                conn.execute(_insert(self.engine).on_conflict_do_nothing(index_elements=["scan_id"]), retries)
            self.batches.adopt(conn, adopted)

    def finish(self, conn) -> None:
        """Record the batches' sizes, and list every batch of this run with scans still to submit."""
        run = self.run
        this_run = (audit_batches.c.dag_id == run.dag_id) & (audit_batches.c.run_id == run.run_id)
        batch_size = (
            select(func.count()).where(audit_scans.c.batch_id == audit_batches.c.batch_id).scalar_subquery()
        )
        conn.execute(update(audit_batches).where(this_run).values(size=batch_size))
        # Batches of this run not yet fully submitted (a rerun of planning after a crash) are kept too.
        unfinished = (
            select(audit_scans.c.batch_id, func.count())
            .where(
                audit_scans.c.dag_id == run.dag_id,
                audit_scans.c.run_id == run.run_id,
                audit_scans.c.state == ScanState.PENDING.value,
                audit_scans.c.batch_id.is_not(None),
            )
            .group_by(audit_scans.c.batch_id)
        )
        pending = dict(conn.execute(unfinished).tuples().all())
        self.plan.batch_ids = sorted(pending)
        self.plan.planned = sum(pending.values())


class _Batcher:
    """Cuts the scans a run submits into batches as planning goes, in catalog order.

    A new scan gets its batch id before it is inserted and an adopted one is moved into the open batch,
    so planning never holds the run's list of scan ids nor rewrites its rows afterwards.
    """

    def __init__(self, run: RunContext, size: int):
        self.run = run
        self.size = size
        self.batch_id: str | None = None
        self.filled = 0

    def place(self, conn, scan_id: str) -> str:
        """The batch ``scan_id`` goes into: the open one, or a new one named after its first scan."""
        if self.batch_id is None or self.filled >= self.size:
            digest = hashlib.sha256(
                f"{self.run.dag_id}\x1f{self.run.run_id}\x1f{scan_id}".encode()
            ).hexdigest()
            self.batch_id = f"b{digest[:31]}"
            self.filled = 0
            conn.execute(
                audit_batches.insert(),
                {"batch_id": self.batch_id, "dag_id": self.run.dag_id, "run_id": self.run.run_id,
                 "size": 0, "created_at": _now()},
            )  # fmt: skip
        self.filled += 1
        return self.batch_id

    def adopt(self, conn, scan_ids: list[str]) -> None:
        """Move pending scans of earlier runs into this run's batches (same scan ids)."""
        by_batch: dict[str, list[str]] = {}
        for scan_id in scan_ids:
            by_batch.setdefault(self.place(conn, scan_id), []).append(scan_id)
        for batch_id, ids in by_batch.items():
            conn.execute(
                update(audit_scans)
                .where(audit_scans.c.scan_id.in_(ids), audit_scans.c.state == ScanState.PENDING.value)
                .values(
                    batch_id=batch_id,
                    dag_id=self.run.dag_id,
                    run_id=self.run.run_id,
                    updated_at=_now(),
                    last_error=None,
                )
            )


def plan_run(engine: Engine, spec: CatalogSpec, run: RunContext, options: PlanOptions) -> RunPlan:
    """Read the run's catalog interval, record every decision, and return the batches to submit."""
    planner = _Planner(engine, run, options)
    rows = read_catalog(
        engine,
        spec,
        run.interval_start,
        run.interval_end,
        source_filter=options.source_filter,
        limit=options.limit,
    )
    for chunk in _chunks(rows, 2_000):
        with engine.begin() as conn:
            planner.plan_chunk(conn, chunk)
    with engine.begin() as conn:
        planner.adopt_leftovers(conn)
        planner.finish(conn)
    summary = {key: value for key, value in planner.plan.as_dict().items() if key != "batch_ids"}
    log.info("Planned run %s into %d batches: %s", run.run_id, len(planner.plan.batch_ids), summary)
    return planner.plan
