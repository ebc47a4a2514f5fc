"""``CopyleaksSubmitImagesOperator``: submit one batch of planned scans to Copyleaks.

The batch's rows live in the warehouse (only the batch id travels through XCom). Each outcome is
recorded as it arrives, so a retried task skips what was already accepted and resubmits the rest
with the same deterministic scan ids.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from contextlib import aclosing
from functools import cached_property
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseHook, BaseOperator
from airflow.sdk.exceptions import AirflowException, AirflowFailException

from copyleaks_provider.exceptions import (
    CopyleaksAuthError,
    CopyleaksBadRequestError,
    CopyleaksConflictError,
    CopyleaksCreditsError,
    CopyleaksError,
    CopyleaksLoginBlockedError,
    CopyleaksValidationError,
)
from copyleaks_provider.hooks import CopyleaksHook, SubmitRequest
from copyleaks_provider.settings import DEFAULT_CONN_ID
from image_audit.warehouse.engine import get_engine
from image_audit.warehouse.scans import load_unsent_scans, record_submit_error, record_transitions
from image_audit.warehouse.schema import ScanState

if TYPE_CHECKING:
    from airflow.sdk import Context

#: Account-level errors: no later request of this task can succeed, so it stops. Bad credentials and no
#: credits fail it for good; a login block fails this try, and the task's retry comes after the block.
ACCOUNT_ERRORS = (CopyleaksAuthError, CopyleaksCreditsError, CopyleaksLoginBlockedError)


class CopyleaksSubmitImagesOperator(BaseOperator):
    """Submit the ``pending`` scans of warehouse batch ``batch_id`` to Copyleaks' async image detector.

    :param batch_id: the batch to submit (from the planning task).
    :param copyleaks_conn_id: the Copyleaks connection (credentials, hosts, webhook base and secret).
    :param model: detection model (alias or full name); ``None`` sends each scan's planned model.
    :param mask_type: ``heatmap`` or ``None``.
    :param sandbox: mock results, no credits; ``None`` sends what planning recorded for each scan (the
        report's credits count on it).
    :param developer_payload: echoed back in each webhook.
    :param webhook_base_url: overrides the connection's public receiver URL.
    :param flush_every: outcomes recorded per warehouse write (bounds what a crash can forget).
    """

    template_fields: Sequence[str] = (
        "batch_id",
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
        batch_id: str,
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
        self.batch_id = batch_id
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

    def execute(self, context: Context) -> dict[str, int]:
        engine = get_engine()
        scans = load_unsent_scans(engine, self.batch_id)
        if not scans:
            self.log.info("Batch %s: nothing left to submit", self.batch_id)
            return {"submitted": 0, "rejected": 0, "pending": 0}
        self.log.info("Batch %s: submitting %d images", self.batch_id, len(scans))
        requests, invalid = self._build_requests(scans)
        record_transitions(engine, invalid)
        counts = asyncio.run(self._submit(engine, requests))
        counts["rejected"] += len(invalid)
        self.log.info("Batch %s done: %s", self.batch_id, counts)
        if counts["pending"]:
            raise AirflowException(
                f"{counts['pending']} of {len(scans)} submissions of batch {self.batch_id} failed after "
                "retries (rate limits, Copyleaks errors or network); the task's retry resubmits only those"
            )
        return counts

    def _build_requests(self, scans: list[dict]) -> tuple[list[SubmitRequest], list[tuple]]:
        requests, invalid = [], []
        headers_by_ref: dict[str, list[tuple[str, str]]] = {}
        for scan in scans:
            try:
                ref = scan["fetch_headers_ref"]
                if ref and ref not in headers_by_ref:
                    headers_by_ref[ref] = fetch_headers(ref)
                requests.append(
                    self.hook.build_submit_request(
                        scan["scan_id"],
                        scan["url"],
                        scan["file_name"],
                        model=self.model or scan["model"],
                        mask_type=self.mask_type or None,
                        headers=headers_by_ref.get(ref) if ref else None,
                        sandbox=scan["sandbox"] if self.sandbox is None else self.sandbox,
                        developer_payload=self.developer_payload or None,
                    )
                )
            except CopyleaksValidationError as exc:
                invalid.append((scan["scan_id"], ScanState.REJECTED, f"not submitted: {exc}"))
        return requests, invalid

    async def _submit(self, engine, requests: list[SubmitRequest]) -> dict[str, int]:
        counts = {"submitted": 0, "rejected": 0, "pending": 0}
        changes: list[tuple[str, ScanState, str | None]] = []
        transient: dict[str, list[str]] = {}
        account_error: CopyleaksError | None = None
        last_flush = time.monotonic()

        async def flush() -> None:
            nonlocal last_flush
            batch, changes[:] = list(changes), []
            await asyncio.to_thread(record_transitions, engine, batch)
            last_flush = time.monotonic()

        try:
            async with (
                self.hook.get_async_client() as client,
                aclosing(client.submit_many(requests)) as outcomes,
            ):
                async for outcome in outcomes:
                    error = outcome.error
                    if error is None or isinstance(error, CopyleaksConflictError):
                        # 409 on a deterministic id: Copyleaks already holds this scan from an earlier try.
                        changes.append((outcome.scan_id, ScanState.SUBMITTED, None))
                        counts["submitted"] += 1
                    elif isinstance(error, ACCOUNT_ERRORS):
                        account_error = error
                        break
                    elif isinstance(error, CopyleaksBadRequestError | CopyleaksValidationError):
                        changes.append(
                            (outcome.scan_id, ScanState.REJECTED, f"Copyleaks refused it: {error}")
                        )
                        counts["rejected"] += 1
                    else:
                        transient.setdefault(type(error).__name__ + ": " + str(error), []).append(
                            outcome.scan_id
                        )
                        counts["pending"] += 1
                    if len(changes) >= self.flush_every or time.monotonic() - last_flush > 2.0:
                        await flush()
        finally:  # what Copyleaks accepted is recorded even when the batch stops on an exception
            await flush()
        for message, scan_ids in transient.items():
            await asyncio.to_thread(record_submit_error, engine, scan_ids, message)
        if isinstance(account_error, CopyleaksLoginBlockedError):
            raise AirflowException(
                f"{counts['submitted']} images were submitted before it stopped. {account_error}"
            )
        if account_error is not None:
            raise AirflowFailException(_account_error_message(account_error, counts))
        return counts


def fetch_headers(ref: str) -> list[tuple[str, str]]:
    """Headers Copyleaks must send to fetch an image, from the Airflow connection named by ``ref``.

    The connection's extra holds ``{"headers": {"Authorization": "..."}}`` (or a list of pairs); being
    a connection, its values are masked in logs.
    """
    headers = BaseHook.get_connection(ref).extra_dejson.get("headers") or {}
    pairs = headers.items() if isinstance(headers, dict) else headers
    return [(str(name), str(value)) for name, value in pairs]


def _account_error_message(error: CopyleaksError, counts: dict[str, int]) -> str:
    done = f"{counts['submitted']} images of this batch were submitted before it stopped"
    if isinstance(error, CopyleaksCreditsError):
        return (
            f"Copyleaks has no credits left on this account (402). {done}; the rest stay pending and "
            "the next run submits them. Top up credits, or run with sandbox=True to test without credits."
        )
    return (
        f"Copyleaks refused the credentials ({error.status_code}). {done}. Check the email and API key "
        "of the Copyleaks connection (Admin > Connections, or AIRFLOW_CONN_COPYLEAKS_DEFAULT)."
    )
