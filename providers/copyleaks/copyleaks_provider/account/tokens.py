"""The access token as this process sees it: read from a login answer, kept in memory so a request
costs no database read (the deployment's shared copy is :mod:`copyleaks_provider.account.state`'s), and
sent as the bearer header; also how long to wait out a login block, and log masking of secrets.
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime, timedelta

import httpx

from copyleaks_provider.account.state import AccountState, LoginBlocked, Token
from copyleaks_provider.exceptions import CopyleaksAuthError, CopyleaksLoginBlockedError

log = logging.getLogger(__name__)

#: Renew the access token this long before Copyleaks' ``.expires`` (the official SDK uses 5 minutes),
#: or a tenth of its lifetime when that is shorter.
TOKEN_RENEW_MARGIN = timedelta(minutes=5)
#: How long Copyleaks blocks logins after too many, when its 429 does not say (its documentation).
DEFAULT_LOGIN_BLOCK_SECONDS = 300.0

#: Tokens this process has seen, by account: the fast path, so a request costs no database read.
_LOCAL_TOKENS: dict[str, Token] = {}


def token_from(response: httpx.Response) -> Token:
    """The token of a 200 login answer, to be renewed a margin before it expires.

    Its lifetime is ``.expires - .issued``, both Copyleaks' clock, counted from now on ours: a local
    clock that runs ahead would otherwise see every token as expired and log in at every call.
    """
    try:
        body = response.json()
        value = body["access_token"]
        expires = _utc(body[".expires"])
        issued = _utc(body[".issued"]) if body.get(".issued") else datetime.now(UTC)
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise CopyleaksAuthError(response.status_code, "the login answer has no access token") from exc
    mask(value)
    lifetime = max(expires - issued, timedelta(0))
    margin = min(TOKEN_RENEW_MARGIN, lifetime / 10)
    return Token(value, (datetime.now(UTC) + lifetime - margin).timestamp())


def _utc(value: str) -> datetime:
    moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def local_token(state: AccountState, stale: str | None) -> str | None:
    """This process's copy of the account's token while it is good to use and is not ``stale``."""
    token = _LOCAL_TOKENS.get(state.account)
    if token is None or token.value == stale or token.renew_at <= time.time():
        return None
    return token.value


def remember(state: AccountState, token: Token) -> str:
    """Keep ``token`` as this process's copy (masked in logs); its value."""
    mask(token.value)
    _LOCAL_TOKENS[state.account] = token
    return token.value


def forget_local_token(state: AccountState) -> None:
    """Drop this process's copy of the account's token (the next request reads or logs in afresh)."""
    _LOCAL_TOKENS.pop(state.account, None)


def login_block_wait(block: LoginBlocked, started: float, max_wait: float) -> float:
    """Seconds to wait out a login block, or the error that says why the task will not wait."""
    waited = time.monotonic() - started
    if waited + block.seconds > max_wait:
        raise CopyleaksLoginBlockedError(
            429,
            f"Copyleaks refuses logins of this account for about {block.seconds:.0f} s more (too many "
            f"logins: it allows 12 per 15 minutes). Waited {waited:.0f} s; the task waits at most "
            "max_login_wait_seconds of the connection. Every task of this deployment shares one token, "
            "so look for something else logging in with this account (another deployment, a script, the "
            "connection's Test button); the task's retry will log in once the block is over.",
            retry_after=block.seconds,
        ) from None
    log.warning("Copyleaks blocks logins of this account; waiting %.0f s", block.seconds)
    return block.seconds


def mask(secret: str) -> None:
    """Register a secret with Airflow's log masker (a no-op outside Airflow's logging)."""
    try:
        from airflow.sdk.log import mask_secret

        mask_secret(secret)
    except Exception:  # masking must never break a request
        log.debug("could not register a secret with the log masker")


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}
