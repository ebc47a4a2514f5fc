"""What a planning is asked (the run, its options), what it answers (the plan) and what an image
costs. ``image_audit.planning`` exports them; they live apart so that the phases
(``image_audit.planning.phases``) use them without importing the module that runs them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime

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
    #: Submissions that fit this run's window (``submission_capacity``); None: no cap.
    max_submissions: int | None = None
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
    deferred_by_window: int = 0
    exhausted: int = 0

    def as_dict(self) -> dict:
        return asdict(self)
