"""A run as planning sees it: which run and interval (``RunContext``), what it asks for
(``PlanOptions``) and what planning decided for it (``RunPlan``)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime

#: Credits Copyleaks charges for one image scan (``expectedCredits`` of the response): the unit of
#: ``PlanOptions.max_credits``.
CREDITS_PER_IMAGE = 1


@dataclass(frozen=True)
class RunContext:
    """The DAG run being planned, and the catalog interval ``[interval_start, interval_end)`` it audits."""

    dag_id: str
    run_id: str
    interval_start: datetime
    interval_end: datetime


@dataclass(frozen=True)
class PlanOptions:
    """What a run asks of planning: the model, the caps on what it submits, and which rows it reads."""

    model: str
    sandbox: bool = False
    #: Scan again images already scanned (and retry exhausted ones) with the model.
    force_rescan: bool = False
    batch_size: int = 1000
    #: The run's credit budget; None: no cap.
    max_credits: int | None = None
    #: The credits the account has for this run (its balance less the reserve); None: not read (a
    #: sandbox run costs nothing).
    credit_balance: int | None = None
    #: Submissions that fit this run's window (``submission_capacity``); None: no cap.
    max_submissions: int | None = None
    #: A ``timed_out`` scan gets a new attempt while its attempt number is below this.
    max_attempts: int = 3
    #: Only the catalog rows of this source; None: all.
    source_filter: str | None = None
    #: Only the first ``limit`` rows of the interval (in catalog order); None: all.
    limit: int | None = None
    #: The interval starts at the catalog's watermark, not at ``RunContext.interval_start`` (where the
    #: catalog's first such run starts), and the run moves the watermark to its end unless a source
    #: filter or a limit narrows it (``image_audit.planning.watermark``).
    follow_watermark: bool = False


@dataclass
class RunPlan:
    """What planning decided; small enough for XCom and the task log."""

    #: This run's batches with scans still to submit, and how many scans they hold.
    batch_ids: list[str] = field(default_factory=list)
    planned: int = 0
    new: int = 0
    resumed: int = 0
    retried: int = 0
    rejected: int = 0
    already_scanned: int = 0
    in_progress: int = 0
    deferred_by_budget: int = 0
    deferred_by_credits: int = 0
    deferred_by_window: int = 0
    exhausted: int = 0

    def as_dict(self) -> dict:
        return asdict(self)
