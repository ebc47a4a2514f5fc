"""A run's progress as people are told it: the "Audit report" tab's live page and the deadline alert.

One reading of the warehouse (:func:`read_run_progress`) gives the figures (planned, submitted,
completed, remaining...), the measured rates and the expected finish, with the sentences both say
them in, so the tab and the alert never disagree. Light on purpose (no FastAPI): the alert's callback
imports it on a worker.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import Connection, Engine

from copyleaks_provider.settings import DEFAULT_CONN_ID, CopyleaksSettings
from image_audit.planning.window import submission_minutes
from image_audit.warehouse.lifecycle import ScanState
from image_audit.warehouse.progress import (
    count_scan_states_sync,
    recent_outcome_rate_sync,
    recent_submission_rate_sync,
)

#: The spans the rates are measured over: submissions follow the account's pace second by second;
#: results arrive as Copyleaks finishes scans, in bursts, so they are averaged over longer.
SUBMISSION_RATE_SECONDS = 60.0
OUTCOME_RATE_SECONDS = 300.0


@dataclass(frozen=True)
class RunProgress:
    """Where one run's scans are at ``at``, and when the run may end."""

    dag_id: str
    run_id: str
    counts: dict[str, int]  # {state: scans} (``count_scan_states_sync``)
    submission_rate: float | None  # submissions/s over the last minute; None: none then
    outcome_rate: float | None  # results and errors stored/s over the last 5 minutes; None: none then
    budget: float | None  # the account's requests/s; 0 or None: no limit
    at: datetime

    def _n(self, state: ScanState) -> int:
        return self.counts.get(state.value, 0)

    @property
    def planned(self) -> int:
        return sum(self.counts.values())

    @property
    def pending(self) -> int:
        """Planned, not yet submitted."""
        return self._n(ScanState.PENDING)

    @property
    def awaiting_results(self) -> int:
        """Submitted, their result still owed by webhook."""
        return self._n(ScanState.SUBMITTED)

    @property
    def submitted(self) -> int:
        return self.planned - self.pending - self._n(ScanState.REJECTED)

    @property
    def remaining(self) -> int:
        """Still waiting: to submit, or for their result."""
        return self.pending + self.awaiting_results

    @property
    def estimate_rate(self) -> float | None:
        """The submission rate the finish is estimated at: the measured one, else the budget (the most
        the account allows)."""
        return self.submission_rate or self.budget

    @property
    def expected_finish(self) -> datetime | None:
        """When the last scan should be submitted (at :attr:`estimate_rate`) or, every scan sent, when
        the last result should arrive (at the measured :attr:`outcome_rate`); None: unknown (no limit to
        estimate at, or no result arriving) or nothing left."""
        if self.pending:
            minutes = submission_minutes(self.pending, self.estimate_rate)
            return None if minutes is None else self.at + timedelta(minutes=minutes)
        if self.awaiting_results and self.outcome_rate:
            return self.at + timedelta(seconds=self.awaiting_results / self.outcome_rate)
        return None

    def rows(self) -> dict[str, int]:
        """The figures, labelled as both the tab and the alert show them."""
        return {
            "Planned": self.planned,
            "Submitted": self.submitted,
            "Completed": self._n(ScanState.COMPLETED),
            "Failed": self._n(ScanState.FAILED),
            "Timed out": self._n(ScanState.TIMED_OUT),
            "Rejected (never sent)": self._n(ScanState.REJECTED),
            "Remaining": self.remaining,
        }

    def rate_line(self) -> str:
        """The measured submission rate against the account's budget."""
        budget_text = f"{self.budget:g} requests/s" if self.budget else "no request limit"
        if self.submission_rate is None:
            return f"No submission in the last minute (the account's budget: {budget_text})."
        share = f" ({self.submission_rate / self.budget:.0%} of it)" if self.budget else ""
        return (
            f"Submitting at {self.submission_rate:.3g} requests/s over the last minute; the account's "
            f"budget: {budget_text}{share}."
        )

    def outlook(self) -> str:
        """What is left and when it should be done."""
        finish = self.expected_finish
        if not self.planned:
            return "No scans are recorded for this run yet: planning has not run (or this is no audit run)."
        if self.pending:
            if finish is None:
                return f"{self.pending:,} scans to submit (the account has no request limit)."
            minutes = submission_minutes(self.pending, self.estimate_rate)
            return (
                f"{self.pending:,} scans to submit at {self.estimate_rate:.3g} requests/s: about "
                f"{minutes:,} min, expected to finish around {utc_text(finish)} (results arrive by webhook "
                "shortly after)."
            )
        if self.awaiting_results:
            waiting = (
                f"Every scan is submitted; {self.awaiting_results:,} results are still to arrive by webhook"
            )
            if finish is None:
                return f"{waiting}, and none arrived in the last {OUTCOME_RATE_SECONDS / 60:g} minutes."
            return (
                f"{waiting}, arriving at {self.outcome_rate:.3g}/s over the last "
                f"{OUTCOME_RATE_SECONDS / 60:g} minutes: expected around {utc_text(finish)}."
            )
        return "Every scan has its outcome: the report is being written."

    def as_dict(self) -> dict:
        """The figures as plain values (a notifier's context, JSON)."""
        finish = self.expected_finish
        return {
            "planned": self.planned,
            "submitted": self.submitted,
            "completed": self._n(ScanState.COMPLETED),
            "failed": self._n(ScanState.FAILED),
            "timed_out": self._n(ScanState.TIMED_OUT),
            "rejected": self._n(ScanState.REJECTED),
            "to_submit": self.pending,
            "awaiting_results": self.awaiting_results,
            "remaining": self.remaining,
            "submission_rate": self.submission_rate,
            "outcome_rate": self.outcome_rate,
            "budget": self.budget,
            "expected_finish": finish.isoformat() if finish else None,
            "at": self.at.isoformat(),
        }


def read_run_progress(
    conn_or_engine: Connection | Engine, dag_id: str, run_id: str, *, budget: float | None
) -> RunProgress:
    """The run's :class:`RunProgress` now (one connection for its reads)."""
    if isinstance(conn_or_engine, Engine):
        with conn_or_engine.connect() as conn:
            return read_run_progress(conn, dag_id, run_id, budget=budget)
    conn = conn_or_engine
    return RunProgress(
        dag_id=dag_id,
        run_id=run_id,
        counts=count_scan_states_sync(conn, dag_id, run_id),
        submission_rate=recent_submission_rate_sync(
            conn, dag_id, run_id, window_seconds=SUBMISSION_RATE_SECONDS
        ),
        outcome_rate=recent_outcome_rate_sync(conn, dag_id, run_id, window_seconds=OUTCOME_RATE_SECONDS),
        budget=budget,
        at=datetime.now(UTC),
    )


def account_requests_per_second(conn_id: str = DEFAULT_CONN_ID) -> float:
    """The account's request rate from the Copyleaks connection (its default, 10/s, without one)."""
    from airflow.sdk import BaseHook

    try:
        return CopyleaksSettings.from_connection(BaseHook.get_connection(conn_id)).requests_per_second
    except Exception:  # no connection here: the estimate uses the documented default
        return CopyleaksSettings.model_fields["requests_per_second"].default


def utc_text(when: datetime | None) -> str:
    """``when`` as people read it in the tab and the alerts: ``2026-11-21 07:00 UTC``."""
    return when.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC") if when else "unknown"
