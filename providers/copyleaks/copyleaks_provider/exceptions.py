"""Typed errors of the Copyleaks integration.

Callers branch on the type, never on message text: ``permanent`` errors (bad key, no credits, a request
Copyleaks rejects) must fail fast, the others are retried with backoff.
"""

from __future__ import annotations


class CopyleaksError(Exception):
    """Base of every error raised by the Copyleaks integration."""

    permanent: bool = True


class CopyleaksValidationError(CopyleaksError, ValueError):
    """A request failed client-side validation; nothing was sent."""


class CopyleaksNetworkError(CopyleaksError):
    """The request did not get an HTTP answer (connection refused, reset, timeout)."""

    permanent = False


class CopyleaksHTTPError(CopyleaksError):
    """Copyleaks answered with an error status. ``message`` is Copyleaks' own text."""

    def __init__(self, status_code: int, message: str, *, method: str = "", path: str = "") -> None:
        self.status_code = status_code
        self.message = message
        self.method = method
        self.path = path
        where = f" on {method} {path}" if method else ""
        super().__init__(f"Copyleaks answered {status_code}{where}: {message}")


class CopyleaksAuthError(CopyleaksHTTPError):
    """401/403, or a login refused: the email or API key is wrong, or the account may not do this."""


class CopyleaksCreditsError(CopyleaksHTTPError):
    """402: the account has no credits left."""


class CopyleaksBadRequestError(CopyleaksHTTPError):
    """400/422: Copyleaks rejected this request (its message says why); retrying will not help."""


class CopyleaksConflictError(CopyleaksHTTPError):
    """409: the scan id is already in use (for a deterministic id: this image was already submitted)."""


class CopyleaksRateLimitError(CopyleaksHTTPError):
    """429: too many requests; ``retry_after`` is Copyleaks' Retry-After in seconds, when given."""

    permanent = False

    def __init__(self, status_code: int, message: str, *, retry_after: float | None = None, **kwargs) -> None:
        super().__init__(status_code, message, **kwargs)
        self.retry_after = retry_after


class CopyleaksAccountStateError(CopyleaksError):
    """The database where the deployment shares the account's token and budget did not answer; retried."""

    permanent = False


class CopyleaksLoginBlockedError(CopyleaksRateLimitError):
    """429 on login: Copyleaks blocks the account's logins for ``retry_after`` seconds, longer than the
    caller may wait. Not retried in place: hammering the login endpoint only prolongs the block."""

    permanent = True


class CopyleaksServerError(CopyleaksHTTPError):
    """5xx (503 is maintenance): transient on Copyleaks' side."""

    permanent = False


#: Errors of the account, not of one request: no later request can succeed until the user acts (bad
#: credentials, no credits) or the block ends (a login block, whose task retries after it).
ACCOUNT_ERRORS = (CopyleaksAuthError, CopyleaksCreditsError, CopyleaksLoginBlockedError)


def account_error_text(error: CopyleaksHTTPError) -> tuple[str, str]:
    """What an account error (:data:`ACCOUNT_ERRORS`) is, and what the user should change: the two halves
    of the message a task fails with."""
    if isinstance(error, CopyleaksCreditsError):
        return (
            "Copyleaks has no credits left on this account (402)",
            "Top up credits, or run with sandbox=True to test without credits.",
        )
    return (
        f"Copyleaks refused the credentials ({error.status_code})",
        "Check the email and API key of the Copyleaks connection (Admin > Connections, or "
        "AIRFLOW_CONN_COPYLEAKS_DEFAULT).",
    )
