"""``CopyleaksHook``: the only code that talks HTTP to Copyleaks (login, sync calls, webhook URLs).

Nothing is sent that fails validation (:mod:`~copyleaks_provider.validation`); an error answer becomes a
typed exception, and a transient one (429, 5xx, network) is retried with backoff honouring Retry-After
(:mod:`~copyleaks_provider.retries`). Copyleaks limits the *account*, so every request uses the
deployment's shared token and takes a send slot of the account's shared budget
(:mod:`copyleaks_provider.account`): one login serves every task, a 401 leads to one re-login for all, a
login block is waited out or reported. ``get_async_client()`` (:mod:`~copyleaks_provider.hooks.async_client`)
serves batches over one connection pool with bounded concurrency.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable
from datetime import date
from functools import cached_property
from urllib.parse import urlsplit

import httpx
from airflow.sdk import BaseHook
from tenacity import Retrying

from copyleaks_provider.account.credits import CREDITS_PATH, parse_credit_balance, usage_history_path
from copyleaks_provider.account.pacing import MAX_MISSED_SLOTS, Pacer, pacers
from copyleaks_provider.account.state import AccountState, LoginBlocked, Token, account_state
from copyleaks_provider.account.tokens import (
    DEFAULT_LOGIN_BLOCK_SECONDS,
    bearer,
    forget_local_token,
    local_token,
    login_block_wait,
    mask,
    remember,
    token_from,
)
from copyleaks_provider.exceptions import CopyleaksError, CopyleaksNetworkError, CopyleaksValidationError
from copyleaks_provider.hooks.async_client import CopyleaksAsyncClient
from copyleaks_provider.models import DetectionResponse
from copyleaks_provider.retries import RetryPolicy, error_for, retry_after
from copyleaks_provider.scan_ids import DEFAULT_MODEL, validate_scan_id
from copyleaks_provider.settings import DEFAULT_CONN_ID, CopyleaksSettings
from copyleaks_provider.validation import SubmitRequest, check_form, check_path, submit_path
from copyleaks_provider.webhooks.auth import callback_payload, webhook_url

__all__ = ["CopyleaksHook"]

log = logging.getLogger(__name__)

LOGIN_PATH = "/v3/account/login/api"


class CopyleaksHook(BaseHook):
    """Copyleaks AI Image Detector: login, async submit, sync check, webhook URLs.

    :param copyleaks_conn_id: the Airflow connection (type ``copyleaks``).
    :param settings: use these instead of reading the connection (a standalone receiver, tests).
    :param max_retries: retries of a transient failure (429, 5xx, network) per request.
    """

    conn_name_attr = "copyleaks_conn_id"
    default_conn_name = DEFAULT_CONN_ID
    conn_type = "copyleaks"
    hook_name = "Copyleaks AI Image Detector"

    def __init__(
        self,
        copyleaks_conn_id: str = DEFAULT_CONN_ID,
        *,
        settings: CopyleaksSettings | None = None,
        max_retries: int = 5,
        retry_max_wait: float = 30.0,
        retry_base_wait: float = 1.0,
    ) -> None:
        super().__init__()
        self.copyleaks_conn_id = copyleaks_conn_id
        self._settings = settings
        self.retry_policy = RetryPolicy(max_retries, retry_base_wait, retry_max_wait)
        self._pace_lock = threading.Lock()
        if settings is not None:
            _mask_settings(settings)

    @property
    def settings(self) -> CopyleaksSettings:
        """The connection's settings, read once."""
        if self._settings is None:
            self._settings = CopyleaksSettings.from_connection(self.get_connection(self.copyleaks_conn_id))
            _mask_settings(self._settings)
        return self._settings

    @cached_property
    def _client(self) -> httpx.Client:
        return httpx.Client(timeout=self.settings.timeout_seconds)

    @cached_property
    def account_state(self) -> AccountState:
        """Where the deployment shares this account's token and request budget."""
        return account_state(self.settings)

    @cached_property
    def _sync_pacers(self) -> dict[str, Pacer]:
        return pacers(self.settings, self.account_state)

    # sync API -----------------------------------------------------------------------------------
    def login(self) -> str:
        """The account's access token: the deployment's shared one, or (with retries) a new login."""
        return Retrying(**self.retry_policy.options())(self._token)

    def _token(self, stale: str | None = None, *, max_wait: float | None = None) -> str:
        """The shared token; ``stale`` is one Copyleaks just refused. A login block is waited out for
        up to ``max_wait`` (default: the connection's ``max_login_wait_seconds``), then reported."""
        if token := local_token(self.account_state, stale):
            return token
        max_wait = self.settings.max_login_wait_seconds if max_wait is None else max_wait
        started = time.monotonic()
        while True:
            try:
                return remember(self.account_state, self.account_state.login(stale, self.log_in))
            except LoginBlocked as block:
                time.sleep(login_block_wait(block, started, max_wait))

    def log_in(self) -> Token:
        """One login request; called through ``account_state.login``, under the account's lock, so no other
        process logs in meanwhile."""
        response = self._send("POST", self.settings.identity_url + LOGIN_PATH, json=self._credentials())
        if response.status_code == 429:
            raise LoginBlocked(retry_after(response) or DEFAULT_LOGIN_BLOCK_SECONDS)
        if response.is_error:
            raise error_for(response, login=True)
        log.info(
            "Logged in to Copyleaks as %s (this token now serves the whole deployment)", self.settings.email
        )
        return token_from(response)

    def submit_image(self, request: SubmitRequest) -> None:
        """Submit one image for async detection; Copyleaks POSTs the result to the request's webhook."""
        self._api("PUT", submit_path(request.scan_id), json=request.to_wire())

    def check_image(
        self,
        scan_id: str,
        image: bytes,
        file_name: str,
        *,
        model: str = DEFAULT_MODEL,
        sandbox: bool | None = None,
    ) -> DetectionResponse:
        """Synchronous check of image bytes (for images Copyleaks cannot fetch)."""
        data = check_form(image, file_name, model, self.sandbox_or_default(sandbox))
        response = self._api(
            "POST", check_path(scan_id), kind="check", data=data, files={"image": (file_name, image)}
        )
        return DetectionResponse.model_validate(response.json())

    def webhook_url(self, scan_id: str) -> str:
        """Where Copyleaks must POST the result of ``scan_id``: the receiver URL with its HMAC token."""
        settings = self.settings
        if not settings.webhook_base_url or not settings.webhook_secret:
            raise CopyleaksValidationError(
                "the Copyleaks connection needs webhook_base_url and webhook_secret in its extra"
            )
        return webhook_url(settings.webhook_base_url, settings.webhook_secret.get_secret_value(), scan_id)

    def get_credits(self) -> int:
        """The credits the account has left (``GET /v3/scans/credits``)."""
        return parse_credit_balance(self._api("GET", CREDITS_PATH).json())

    def get_usage_history(self, start: date, end: date) -> str:
        """The account's usage per day from ``start`` to ``end`` (both included), as Copyleaks' CSV."""
        return self._api("GET", usage_history_path(start, end)).text

    def callback_payload(self, scan_id: str) -> str:
        """The ``developerPayload`` a receiver that requires it checks (made with the webhook secret)."""
        self.webhook_url(scan_id)  # the same settings are required, with the same message
        return callback_payload(self.settings.webhook_secret.get_secret_value(), scan_id)

    def build_submit_request(
        self,
        scan_id: str,
        url: str,
        file_name: str,
        *,
        model: str = DEFAULT_MODEL,
        mask_type: str | None = None,
        headers: Iterable[tuple[str, str]] | None = None,
        sandbox: bool | None = None,
        developer_payload: str | None = None,
    ) -> SubmitRequest:
        """A validated request whose webhook URL and sandbox default come from the connection.

        ``developer_payload``: default: the callback payload that binds the webhook to this submission
        (:func:`~copyleaks_provider.webhooks.auth.callback_payload`).
        """
        if developer_payload is None:
            developer_payload = self.callback_payload(scan_id)
        return SubmitRequest(
            scan_id=validate_scan_id(scan_id),
            url=url,
            file_name=file_name,
            model=model,
            webhook_url=self.webhook_url(scan_id),
            mask_type=mask_type,
            headers=headers,
            sandbox=self.sandbox_or_default(sandbox),
            developer_payload=developer_payload,
        )

    def get_async_client(self) -> CopyleaksAsyncClient:
        """A client for many concurrent requests; use it as ``async with``."""
        return CopyleaksAsyncClient(self)

    def test_connection(self) -> tuple[bool, str]:
        """Log in afresh (the UI's "Test" button): one of the account's 12 logins per 15 minutes. A
        login block is reported at once, not waited out inside the UI's request."""
        try:
            self.account_state.forget()
            forget_local_token(self.account_state)
            Retrying(**self.retry_policy.options())(self._token, max_wait=0)
        except CopyleaksError as exc:
            return False, str(exc)
        return True, "Logged in to Copyleaks"

    # plumbing -----------------------------------------------------------------------------------
    def _credentials(self) -> dict[str, str]:
        return {"email": self.settings.email, "key": self.settings.api_key.get_secret_value()}

    def sandbox_or_default(self, sandbox: bool | None) -> bool:
        """``sandbox``, else the connection's default."""
        return self.settings.sandbox if sandbox is None else bool(sandbox)

    def _send(self, method: str, url: str, **kwargs) -> httpx.Response:
        try:
            return self._client.request(method, url, **kwargs)
        except httpx.HTTPError as exc:
            raise CopyleaksNetworkError(f"{method} {urlsplit(url).path}: {type(exc).__name__}") from exc

    def _pace(self, kind: str) -> None:
        """Wait for this request's slot of the account's shared budget."""
        pacer = self._sync_pacers.get(kind)
        if pacer is None:
            return
        _ = self._client  # built before the slot, not after it: an httpx client loads its CA bundle (~50 ms)
        for _ in range(MAX_MISSED_SLOTS):
            with self._pace_lock:
                slot, send_by = pacer.take()
            time.sleep(max(0.0, slot - time.time()))
            if time.time() <= send_by:
                return
        log.warning("This process keeps missing its send slots (overloaded?); sending anyway")

    def _api(self, method: str, path: str, *, kind: str = "api", **kwargs) -> httpx.Response:
        # A failed login counts as one attempt of this call (no retries nested in retries).
        for attempt in Retrying(**self.retry_policy.options()):
            with attempt:
                token = self._token()
                self._pace(kind)
                response = self._send(method, self.settings.api_url + path, headers=bearer(token), **kwargs)
                if response.status_code == 401:  # expired or revoked: one shared re-login, then give up
                    token = self._token(stale=token)
                    self._pace(kind)
                    response = self._send(
                        method, self.settings.api_url + path, headers=bearer(token), **kwargs
                    )
                if response.is_error:
                    raise error_for(response)
        return response


def _mask_settings(settings: CopyleaksSettings) -> None:
    for secret in (settings.api_key, settings.webhook_secret, *settings.previous_webhook_secrets):
        if secret is not None:
            mask(secret.get_secret_value())
