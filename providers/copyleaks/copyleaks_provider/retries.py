"""What an error answer of Copyleaks means, and whether and when to try again.

Maps an HTTP error response to its typed exception (:mod:`copyleaks_provider.exceptions`) and holds the
retry policy both clients use: exponential backoff with jitter on the transient errors (429, 5xx,
network), honouring Retry-After.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import httpx
from tenacity import (
    Retrying,
    before_sleep_log,
    retry_if_exception,
    retry_if_exception_type,
    stop_after_attempt,
    stop_after_delay,
    wait_exponential,
    wait_random,
)

from copyleaks_provider.exceptions import (
    CopyleaksAuthError,
    CopyleaksBadRequestError,
    CopyleaksConflictError,
    CopyleaksCreditsError,
    CopyleaksError,
    CopyleaksHTTPError,
    CopyleaksRateLimitError,
    CopyleaksServerError,
)

log = logging.getLogger(__name__)


def _message(response: httpx.Response) -> str:
    text = response.text.strip()
    try:
        body = response.json()
        if isinstance(body, dict):
            text = str(body.get("message") or body.get("error") or body.get("detail") or text)
    except ValueError:
        pass
    return text[:500] or response.reason_phrase


def retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("Retry-After")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        try:
            return max(0.0, (parsedate_to_datetime(value) - datetime.now(UTC)).total_seconds())
        except (TypeError, ValueError):
            return None


def error_for(response: httpx.Response, *, login: bool = False) -> CopyleaksHTTPError:
    status, message = response.status_code, _message(response)
    where = {"method": response.request.method, "path": response.request.url.path}
    if login and status in (400, 401, 403):
        return CopyleaksAuthError(
            status, "login refused: check the email and API key of the Copyleaks connection", **where
        )
    if status in (401, 403):
        return CopyleaksAuthError(status, message, **where)
    if status == 402:
        return CopyleaksCreditsError(status, f"no credits left on the Copyleaks account ({message})", **where)
    if status == 409:
        return CopyleaksConflictError(status, message, **where)
    if status == 429:
        return CopyleaksRateLimitError(status, message, retry_after=retry_after(response), **where)
    if status >= 500:
        return CopyleaksServerError(status, message, **where)
    return CopyleaksBadRequestError(status, message, **where)


def _is_transient(exc: BaseException) -> bool:
    return isinstance(exc, CopyleaksError) and not exc.permanent


class RetryPolicy:
    """Copyleaks' advice: wait base, 2 x base, 4 x base ... (capped) plus a random jitter of up to base.

    A 429's Retry-After is the floor of its wait.
    """

    def __init__(self, max_retries: int, base_wait: float, max_wait: float):
        if max_retries < 0 or base_wait < 0 or max_wait < 0:
            raise ValueError("max_retries, retry_base_wait and retry_max_wait must be >= 0")
        self.stop = stop_after_attempt(max_retries + 1)
        self._backoff = wait_exponential(multiplier=base_wait, max=max_wait) + wait_random(0, base_wait)

    def wait(self, retry_state) -> float:
        wait = self._backoff(retry_state)
        exc = retry_state.outcome.exception() if retry_state.outcome else None
        if isinstance(exc, CopyleaksRateLimitError) and exc.retry_after is not None:
            wait = max(wait, exc.retry_after)
        return wait

    def options(self) -> dict[str, Any]:
        return {
            "stop": self.stop,
            "wait": self.wait,
            "retry": retry_if_exception(_is_transient),
            "reraise": True,
            "before_sleep": self._log_retry,
        }

    @staticmethod
    def _log_retry(retry_state) -> None:
        log.warning(
            "Copyleaks request failed (%s); retry %d in %.2f s",
            retry_state.outcome.exception(),
            retry_state.attempt_number,
            retry_state.next_action.sleep if retry_state.next_action else 0.0,
        )


def outage_retrying(
    errors: type[BaseException] | tuple[type[BaseException], ...], seconds: float, logger: logging.Logger
) -> Retrying:
    """A ``tenacity.Retrying`` that rides out an outage (of a database, say): it tries again 0.5 s, 1 s,
    2 s ... 5 s apart while ``errors`` are raised, for up to ``seconds``, then re-raises the last one.
    Only for actions that are safe to repeat."""
    return Retrying(
        retry=retry_if_exception_type(errors),
        stop=stop_after_delay(seconds),
        wait=wait_exponential(multiplier=0.5, max=5),
        before_sleep=before_sleep_log(logger, logging.WARNING),
        reraise=True,
    )
