"""``CopyleaksSubmitImagesOperator``: submit images to Copyleaks' async AI image detector.

Copyleaks answers each submission at once and POSTs the result to the connection's webhook later
(:mod:`copyleaks_provider.webhooks.receiver`). The operator submits through the hook's async client (the
account's shared token and request budget), sorts every answer into submitted / rejected / pending,
and stops the task on an account-level error. Pipelines that keep their scans in a database subclass
it and override :meth:`~CopyleaksSubmitImagesOperator.record` to write each outcome as it arrives.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Mapping, Sequence
from contextlib import aclosing
from dataclasses import dataclass, field
from enum import StrEnum
from functools import cached_property
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseHook, BaseOperator
from airflow.sdk.exceptions import AirflowException, AirflowFailException

from copyleaks_provider.exceptions import (
    ACCOUNT_ERRORS,
    CopyleaksBadRequestError,
    CopyleaksConflictError,
    CopyleaksCreditsError,
    CopyleaksError,
    CopyleaksLoginBlockedError,
    CopyleaksValidationError,
    account_error_text,
)
from copyleaks_provider.hooks.copyleaks import CopyleaksHook
from copyleaks_provider.settings import DEFAULT_CONN_ID
from copyleaks_provider.validation import SubmitRequest

if TYPE_CHECKING:
    from airflow.sdk import Context

#: Seconds between two calls of ``record`` at most, however few outcomes arrived meanwhile.
RECORD_EVERY_SECONDS = 2.0


class SubmissionState(StrEnum):
    SUBMITTED = "submitted"  # Copyleaks holds the scan: 201, or 409 for a scan id it already has
    REJECTED = "rejected"  # refused for good: an invalid request, or Copyleaks' 400
    PENDING = "pending"  # not accepted this time (rate limit, 5xx, network) after the retries


@dataclass(frozen=True)
class Submission:
    """What became of one scan's submission; ``reason`` for a rejected or pending one."""

    scan_id: str
    state: SubmissionState
    reason: str | None = None


@dataclass
class SubmitSummary:
    submitted: int = 0
    rejected: dict[str, str] = field(default_factory=dict)
    pending: dict[str, str] = field(default_factory=dict)

    def add(self, submission: Submission) -> None:
        if submission.state == SubmissionState.SUBMITTED:
            self.submitted += 1
        elif submission.state == SubmissionState.REJECTED:
            self.rejected[submission.scan_id] = submission.reason or ""
        else:
            self.pending[submission.scan_id] = submission.reason or ""

    def counts(self) -> dict[str, int]:
        return {"submitted": self.submitted, "rejected": len(self.rejected), "pending": len(self.pending)}


class CopyleaksSubmitImagesOperator(BaseOperator):
    """Submit ``images`` to Copyleaks' async AI image detector; results go to the webhook.

    :param images: the images, each a mapping with ``scan_id``, ``url``, ``file_name`` and optionally
        ``model``, ``sandbox``, ``headers`` (pairs Copyleaks sends when fetching the URL) or
        ``headers_conn_id`` (an Airflow connection whose extra holds them). Templated.
    :param copyleaks_conn_id: the Copyleaks connection (credentials, hosts, webhook base and secret).
    :param model: detection model (alias or full name) for every image; ``None``: each image's own,
        else the default model.
    :param mask_type: ``heatmap`` or ``None``.
    :param sandbox: mock results, no credits; ``None``: each image's own, else the connection's.
    :param developer_payload: echoed back in each webhook; default: the callback payload that binds each
        webhook to its submission (a receiver with ``require_callback_payload`` refuses any other).
    :param webhook_base_url: overrides the connection's public receiver URL.
    :param flush_every: outcomes handed to :meth:`record` at a time (bounds what a crash can forget).

    Returns (XCom) ``{"submitted": n, "rejected": {scan_id: reason}, "pending": {scan_id: reason}}``;
    the task fails (and its retry resubmits the same deterministic scan ids) when any is pending.
    """

    template_fields: Sequence[str] = (
        "images",
        "model",
        "mask_type",
        "sandbox",
        "developer_payload",
        "webhook_base_url",
    )
    ui_color = "#e8f0fe"

    def __init__(
        self,
        *,
        images: Sequence[Mapping[str, Any]] | str = (),
        copyleaks_conn_id: str = DEFAULT_CONN_ID,
        model: str | None = None,
        mask_type: str | None = None,
        sandbox: bool | None = None,
        developer_payload: str | None = None,
        webhook_base_url: str | None = None,
        flush_every: int = 200,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.images = images
        self.copyleaks_conn_id = copyleaks_conn_id
        self.model = model
        self.mask_type = mask_type
        self.sandbox = sandbox
        self.developer_payload = developer_payload
        self.webhook_base_url = webhook_base_url
        self.flush_every = flush_every

    @cached_property
    def hook(self) -> CopyleaksHook:
        hook = CopyleaksHook(self.copyleaks_conn_id)
        if self.webhook_base_url:
            hook = CopyleaksHook(
                self.copyleaks_conn_id,
                settings=hook.settings.model_copy(
                    update={"webhook_base_url": self.webhook_base_url.rstrip("/")}
                ),
            )
        return hook

    def execute(self, context: Context) -> dict[str, Any]:
        summary = self.submit_images(list(self.images or ()))
        self.raise_if_pending(summary, "images")
        return {"submitted": summary.submitted, "rejected": summary.rejected, "pending": summary.pending}

    def record(self, submissions: list[Submission]) -> None:
        """Called (in a thread) with outcomes as they arrive, and once more when the task stops."""

    def submit_images(self, images: Iterable[Mapping[str, Any]]) -> SubmitSummary:
        """Validate and submit ``images``; every outcome goes to :meth:`record` before this returns."""
        requests, invalid = self._build_requests(images)
        summary = SubmitSummary()
        for submission in invalid:
            summary.add(submission)
        if invalid:
            self.record(invalid)
        asyncio.run(self._submit(requests, summary))
        return summary

    def raise_if_pending(self, summary: SubmitSummary, what: str) -> None:
        if summary.pending:
            raise AirflowException(
                f"{len(summary.pending)} submissions of {what} failed after retries (rate limits, "
                "Copyleaks errors or network); the task's retry resubmits only those"
            )

    def _build_requests(self, images: Iterable[Mapping[str, Any]]) -> tuple[list[SubmitRequest], list]:
        requests, invalid = [], []
        headers_by_conn: dict[str, list[tuple[str, str]]] = {}
        for image in images:
            try:
                headers = image.get("headers")
                if conn_id := image.get("headers_conn_id"):
                    if conn_id not in headers_by_conn:
                        headers_by_conn[conn_id] = fetch_headers(conn_id)
                    headers = headers_by_conn[conn_id]
                model = self.model or image.get("model")
                requests.append(
                    self.hook.build_submit_request(
                        image["scan_id"],
                        image["url"],
                        image["file_name"],
                        **({"model": model} if model else {}),
                        mask_type=self.mask_type or None,
                        headers=headers,
                        sandbox=image.get("sandbox") if self.sandbox is None else self.sandbox,
                        developer_payload=self.developer_payload or None,
                    )
                )
            except CopyleaksValidationError as exc:
                reason = f"not submitted: {exc}"
                invalid.append(Submission(image["scan_id"], SubmissionState.REJECTED, reason))
        return requests, invalid

    async def _submit(self, requests: list[SubmitRequest], summary: SubmitSummary) -> None:
        unrecorded: list[Submission] = []
        account_error: CopyleaksError | None = None
        last_flush = time.monotonic()

        async def flush() -> None:
            nonlocal last_flush
            batch, unrecorded[:] = list(unrecorded), []
            if batch:
                await asyncio.to_thread(self.record, batch)
            last_flush = time.monotonic()

        try:
            async with (
                self.hook.get_async_client() as client,
                aclosing(client.submit_many(requests)) as outcomes,
            ):
                async for outcome in outcomes:
                    # No later request of this task can succeed: it stops. Bad credentials and no credits
                    # fail it for good; a login block fails this try, and its retry comes after the block.
                    if isinstance(outcome.error, ACCOUNT_ERRORS):
                        account_error = outcome.error
                        break
                    submission = _submission(outcome.scan_id, outcome.error)
                    summary.add(submission)
                    unrecorded.append(submission)
                    if (
                        len(unrecorded) >= self.flush_every
                        or time.monotonic() - last_flush > RECORD_EVERY_SECONDS
                    ):
                        await flush()
        finally:  # what Copyleaks accepted is recorded even when the task stops on an exception
            await flush()
        if isinstance(account_error, CopyleaksLoginBlockedError):
            raise AirflowException(
                f"{summary.submitted} images were submitted before it stopped. {account_error}"
            )
        if account_error is not None:
            raise AirflowFailException(_account_error_message(account_error, summary.submitted))


def _submission(scan_id: str, error: CopyleaksError | None) -> Submission:
    if error is None or isinstance(error, CopyleaksConflictError):
        # 409 on a deterministic id: Copyleaks already holds this scan from an earlier try.
        return Submission(scan_id, SubmissionState.SUBMITTED)
    if isinstance(error, CopyleaksBadRequestError | CopyleaksValidationError):
        return Submission(scan_id, SubmissionState.REJECTED, f"Copyleaks refused it: {error}")
    return Submission(scan_id, SubmissionState.PENDING, f"{type(error).__name__}: {error}")


def fetch_headers(conn_id: str) -> list[tuple[str, str]]:
    """Headers Copyleaks must send to fetch an image, from the Airflow connection ``conn_id``.

    The connection's extra holds ``{"headers": {"Authorization": "..."}}`` (or a list of pairs); being
    a connection, its values are masked in logs.
    """
    headers = BaseHook.get_connection(conn_id).extra_dejson.get("headers") or {}
    pairs = headers.items() if isinstance(headers, dict) else headers
    return [(str(name), str(value)) for name, value in pairs]


def _account_error_message(error: CopyleaksError, submitted: int) -> str:
    what, advice = account_error_text(error)
    done = f"{submitted} images were submitted before it stopped"
    if isinstance(error, CopyleaksCreditsError):
        return f"{what}. {done}; the rest were not submitted (a retry or the next run submits them). {advice}"
    return f"{what}. {done}. {advice}"
