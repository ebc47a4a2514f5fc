"""The row-at-a-time planner that ``image_audit.planning`` replaced, kept as the reference its
set-based planning is checked against (``tests/test_planning_equivalence.py``). Copied from the
module as it was, with the intended differences marked ``DIFFERENCE n`` (described in the test); its
finishing step is the module's own, unchanged.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from itertools import islice

from sqlalchemy import Engine, and_, func, select, update
from sqlalchemy.dialects import postgresql, sqlite

from copyleaks_provider.scan_ids import canonical_model, make_rejection_id, make_scan_id
from image_audit.planning.catalog import CatalogRow, CatalogSpec, file_name_of, read_catalog, rejection_reason
from image_audit.planning.plan import finish
from image_audit.planning.types import CREDITS_PER_IMAGE, PlanOptions, RunContext, RunPlan
from image_audit.planning.window import DEFERRED_BY_BUDGET, DEFERRED_BY_WINDOW
from image_audit.warehouse.lifecycle import ScanState
from image_audit.warehouse.schema import audit_batches, audit_scans


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
        #: Images whose leftover scan decided already (planned before the catalog), and how.
        self.leftover_ids: dict[str, str] = {}
        self.budget = options.max_credits
        self.window = options.max_submissions
        self.now = _now()

    # --- rows -------------------------------------------------------------------------------------
    def _scan_row(self, scan_id: str, row: CatalogRow, *, state: ScanState, attempt: int, error=None):
        now = self.now  # DIFFERENCE 2
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
                audit_scans.c.state != ScanState.REJECTED.value,  # DIFFERENCE 1
            ),
        )
        return {r["image_id"]: dict(r) for r in conn.execute(query).mappings()}

    def _new_attempt(self, row: CatalogRow, attempt: int) -> dict:
        scan_id = make_scan_id(str(row.image_id), self.model, attempt)
        return self._scan_row(scan_id, row, state=ScanState.PENDING, attempt=attempt)

    def _admit(self) -> str | None:
        """Take one scan's credits and submission; else the reason the scan waits for a later run.

        When both caps are spent the credit budget is the reason: a longer window would not send it.
        """
        if self.budget is not None and self.budget < CREDITS_PER_IMAGE:
            self.plan.deferred_by_budget += 1
            return f"{DEFERRED_BY_BUDGET} of {self.options.max_credits} credits is spent"
        if self.window is not None and self.window < 1:
            self.plan.deferred_by_window += 1
            return f"{DEFERRED_BY_WINDOW} of {self.options.max_submissions} submissions is full"
        if self.budget is not None:
            self.budget -= CREDITS_PER_IMAGE
        if self.window is not None:
            self.window -= 1
        return None

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
            decided = self.leftover_ids.get(str(row.image_id))
            if decided is not None and not (decided == "exhausted" and self.options.force_rescan):
                continue  # its leftover scan from an earlier run was planned already
            if decided == "exhausted":
                self.plan.exhausted -= 1  # forced: this interval's row retries it after all
            valid.append(row)

        latest = self._latest_scans(conn, [str(r.image_id) for r in valid]) if valid else {}
        for row in valid:
            previous = latest.get(str(row.image_id))
            attempt = 1
            if previous is not None:
                state = ScanState(previous["state"])
                if state == ScanState.PENDING and previous["batch_id"] is None:
                    # this run's own scan, deferred or released by an earlier try of the run
                    if self._admit() is None:
                        adopt.append(previous["scan_id"])
                        self.plan.resumed += 1
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
            deferred = self._admit()
            if deferred is None:
                scan["batch_id"] = self.batches.place(conn, scan["scan_id"])
            else:
                scan["last_error"] = deferred
            inserts.append(scan)

        if inserts:
            statement = _insert(self.engine)
            conn.execute(statement.on_conflict_do_nothing(index_elements=["scan_id"]), inserts)
        self.batches.adopt(conn, adopt)

    def adopt_leftovers(self, conn) -> None:
        """Scans earlier runs left behind: unbatched ``pending`` ones, and ``timed_out`` ones to retry.

        Planned before the interval's catalog rows, oldest first, so they are the first to fit the caps.
        A leftover that does not fit stays (or, for a retry, is inserted) ``pending`` without a batch,
        its ``last_error`` saying which cap held it back.
        """
        query = (
            select(audit_scans)
            .where(audit_scans.c.model == self.model, audit_scans.c.run_id != self.run.run_id)
            .where(
                ((audit_scans.c.state == ScanState.PENDING.value) & audit_scans.c.batch_id.is_(None))
                | (audit_scans.c.state == ScanState.TIMED_OUT.value)
            )
            .order_by(audit_scans.c.created_at, audit_scans.c.ingested_at, audit_scans.c.image_id)
            .order_by(audit_scans.c.scan_id)  # DIFFERENCE 2
        )
        for leftovers in _chunks(conn.execute(query).mappings(), 1000):
            image_ids = [r["image_id"] for r in leftovers]
            latest = self._latest_scans(conn, image_ids)
            adopted: list[str] = []
            still_deferred: dict[str, list[str]] = {}
            retries: list[dict] = []
            for scan in leftovers:
                if scan["image_id"] in self.leftover_ids:
                    continue
                if latest.get(scan["image_id"], {}).get("scan_id") != scan["scan_id"]:
                    continue  # a later attempt exists
                row = CatalogRow(
                    scan["image_id"], scan["url"], scan["file_name"], scan["source"],
                    scan["ingested_at"], scan["fetch_headers_ref"],
                )  # fmt: skip
                if scan["state"] == ScanState.PENDING.value:
                    self.leftover_ids[scan["image_id"]] = "pending"
                    deferred = self._admit()
                    if deferred is None:
                        adopted.append(scan["scan_id"])
                        self.plan.resumed += 1
                    elif deferred != scan["last_error"]:
                        still_deferred.setdefault(deferred, []).append(scan["scan_id"])
                    continue
                if scan["attempt"] >= self.options.max_attempts:
                    self.leftover_ids[scan["image_id"]] = "exhausted"
                    self.plan.exhausted += 1
                    continue
                self.leftover_ids[scan["image_id"]] = "retried"
                new = self._new_attempt(row, scan["attempt"] + 1)
                deferred = self._admit()
                if deferred is None:
                    new["batch_id"] = self.batches.place(conn, new["scan_id"])
                    self.plan.retried += 1
                else:
                    new["last_error"] = deferred  # the next run adopts this attempt
                retries.append(new)
            if retries:
                conn.execute(_insert(self.engine).on_conflict_do_nothing(index_elements=["scan_id"]), retries)
            self.batches.adopt(conn, adopted)
            for reason, scan_ids in still_deferred.items():  # the cap that holds them back now
                conn.execute(
                    update(audit_scans)
                    .where(audit_scans.c.scan_id.in_(scan_ids), audit_scans.c.batch_id.is_(None))
                    .values(last_error=reason, updated_at=_now())
                )


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
            dialect = postgresql if conn.dialect.name == "postgresql" else sqlite  # DIFFERENCE 3
            conn.execute(
                dialect.insert(audit_batches).on_conflict_do_nothing(index_elements=["batch_id"]),
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
    with engine.begin() as conn:  # earlier runs' leftovers first: they fit the caps before new rows
        planner.adopt_leftovers(conn)
    for chunk in _chunks(rows, 2_000):
        with engine.begin() as conn:
            planner.plan_chunk(conn, chunk)
    with engine.begin() as conn:
        finish(conn, run, planner.plan)
    return planner.plan
