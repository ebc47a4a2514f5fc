"""``CopyleaksHook``: the only code that talks HTTP to Copyleaks.

Owns login, request validation (nothing is sent that Copyleaks would refuse), error mapping to
typed exceptions and retries (exponential backoff with jitter on 429 / 5xx / network errors,
honouring Retry-After). Copyleaks limits the *account*, so the token and the request pacing are the
deployment's, not the process's (:mod:`copyleaks_provider.account_state`): one login serves every
task until shortly before the token expires, a 401 leads to one re-login for all, a login block is
waited out or reported, and every request takes a send slot of the account's shared budget. The sync
client serves one-off calls; ``get_async_client()`` submits many images over one connection pool with
bounded concurrency.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from functools import cached_property, partial
from typing import Annotated, Any
from urllib.parse import quote, urlsplit

import aiohttp
import httpx
from airflow.sdk import BaseHook
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator
from tenacity import (
    AsyncRetrying,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential,
    wait_random,
)

from copyleaks_provider.account_state import AccountState, LoginBlocked, Token, account_state
from copyleaks_provider.exceptions import (
    CopyleaksAuthError,
    CopyleaksBadRequestError,
    CopyleaksConflictError,
    CopyleaksCreditsError,
    CopyleaksError,
    CopyleaksHTTPError,
    CopyleaksLoginBlockedError,
    CopyleaksNetworkError,
    CopyleaksRateLimitError,
    CopyleaksServerError,
    CopyleaksValidationError,
)
from copyleaks_provider.models import DetectionResponse
from copyleaks_provider.scan_ids import DEFAULT_MODEL, canonical_model, validate_scan_id
from copyleaks_provider.settings import DEFAULT_CONN_ID, RATE_HEADROOM, CopyleaksSettings
from copyleaks_provider.webhook_auth import webhook_url

log = logging.getLogger(__name__)

LOGIN_PATH = "/v3/account/login/api"
SUBMIT_PATH = "/v1/ai-image-detector-async/{scan_id}/submit"
CHECK_PATH = "/v1/ai-image-detector/{scan_id}/check"
#: File extensions the async endpoint accepts.
SUPPORTED_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".tiff", ".bmp", ".heic", ".heif")
MASK_TYPES = ("heatmap",)
MAX_FILE_NAME = 255
#: Copyleaks refuses uploads of 32 MB or more.
MAX_IMAGE_BYTES = 32 * 1024 * 1024
#: Renew the access token this long before Copyleaks' ``.expires`` (the official SDK uses 5 minutes),
#: or a tenth of its lifetime when that is shorter.
TOKEN_RENEW_MARGIN = timedelta(minutes=5)
#: Each reservation from the shared budget takes this many seconds' worth of slots (at least one). Kept
#: small: a process that is held up (CPU, GC) just before sending holds back all the slots it owns, and
#: then sends them at once; at 40/s blocks of 0.1 s crowded a one-second window by up to 5 requests.
RESERVE_SECONDS = 0.025
#: Slots a request may miss (its process held up past each) before it is sent anyway.
MAX_MISSED_SLOTS = 20
#: How long Copyleaks blocks logins after too many, when its 429 does not say (its documentation).
DEFAULT_LOGIN_BLOCK_SECONDS = 300.0


# --- validation (also used to reject catalog rows before planning) ---------------------------------
def validate_image_url(url: str, *, what: str = "image URL") -> str:
    parts = urlsplit(url or "")
    if parts.scheme not in ("http", "https"):
        raise CopyleaksValidationError(f"unsupported URL scheme {parts.scheme!r} in the {what}: use http(s)")
    if not parts.hostname:
        raise CopyleaksValidationError(f"the {what} has no host")
    return url


def validate_file_name(file_name: str) -> str:
    if not file_name or len(file_name) > MAX_FILE_NAME:
        raise CopyleaksValidationError(f"file name must be 1 to {MAX_FILE_NAME} characters")
    extension = "." + file_name.rsplit(".", 1)[-1].lower() if "." in file_name else ""
    if extension not in SUPPORTED_EXTENSIONS:
        supported = " ".join(SUPPORTED_EXTENSIONS)
        raise CopyleaksValidationError(
            f"unsupported file extension {extension or '(none)'!r}; supported: {supported}"
        )
    return file_name


def _known_model(model: str) -> str:
    canonical_model(model)
    return model


def _mask_type(mask_type: str | None) -> str | None:
    if mask_type is not None and mask_type not in MASK_TYPES:
        raise CopyleaksValidationError(
            f"unsupported maskType {mask_type!r}; supported: {', '.join(MASK_TYPES)}"
        )
    return mask_type


ScanId = Annotated[str, AfterValidator(validate_scan_id)]
ImageUrl = Annotated[str, AfterValidator(validate_image_url)]
WebhookUrl = Annotated[str, AfterValidator(partial(validate_image_url, what="webhook URL"))]
FileName = Annotated[str, AfterValidator(validate_file_name)]
ModelName = Annotated[str, AfterValidator(_known_model)]
MaskType = Annotated[str | None, AfterValidator(_mask_type)]


class SubmitRequest(BaseModel):
    """One async submission; validated on construction, so an invalid request is never sent.

    Invalid fields raise ``CopyleaksValidationError`` naming the field and the rule, never the value
    (headers may carry credentials). ``headers`` and ``webhook_url`` (it carries the callback's HMAC
    token) stay out of ``repr``.
    """

    model_config = ConfigDict(frozen=True)

    scan_id: ScanId
    url: ImageUrl
    file_name: FileName
    model: ModelName = DEFAULT_MODEL
    webhook_url: WebhookUrl = Field(repr=False)
    mask_type: MaskType = None
    headers: tuple[tuple[str, str], ...] | None = Field(default=None, repr=False)
    sandbox: bool = False
    developer_payload: str | None = None

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as exc:
            problems = [
                f"{'.'.join(map(str, e['loc']))}: {e['msg'].removeprefix('Value error, ')}"
                for e in exc.errors()
            ]
            raise CopyleaksValidationError("invalid submit request: " + "; ".join(problems)) from None

    @field_validator("headers", mode="before")
    @classmethod
    def _headers(cls, value: Any) -> Any:
        if value is None:
            return None
        pairs = []
        for pair in value:
            if not (
                isinstance(pair, list | tuple) and len(pair) == 2 and all(isinstance(p, str) for p in pair)
            ):
                raise CopyleaksValidationError("headers must be [name, value] pairs of strings")
            name, header_value = pair
            if not name.strip() or any(c in name + header_value for c in "\r\n"):
                raise CopyleaksValidationError("header names must be non-empty, without CR or LF")
            pairs.append((name, header_value))
        return tuple(pairs)

    def to_wire(self) -> dict[str, Any]:
        """The JSON body of ``PUT /v1/ai-image-detector-async/{scanId}/submit``."""
        body: dict[str, Any] = {
            "url": self.url,
            "fileName": self.file_name,
            "model": self.model,
            "webhooks": {"url": self.webhook_url},
            "sandbox": self.sandbox,
        }
        if self.mask_type:
            body["maskType"] = self.mask_type
        if self.headers:
            body["headers"] = [list(pair) for pair in self.headers]
        if self.developer_payload is not None:
            body["developerPayload"] = self.developer_payload
        return body


@dataclass(frozen=True)
class SubmitOutcome:
    """What became of one request of ``submit_many``: ``error`` is None when Copyleaks accepted it."""

    request: SubmitRequest
    error: CopyleaksError | None = None

    @property
    def scan_id(self) -> str:
        return self.request.scan_id


# --- tokens and pacing: shared by the whole deployment through the account state -------------------
#: Tokens this process has seen, by account: the fast path, so a request costs no database read.
_LOCAL_TOKENS: dict[str, Token] = {}


def _token_from(response: httpx.Response) -> Token:
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
    _mask(value)
    lifetime = max(expires - issued, timedelta(0))
    margin = min(TOKEN_RENEW_MARGIN, lifetime / 10)
    return Token(value, (datetime.now(UTC) + lifetime - margin).timestamp())


def _utc(value: str) -> datetime:
    moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _local_token(state: AccountState, stale: str | None) -> str | None:
    token = _LOCAL_TOKENS.get(state.account)
    if token is None or token.value == stale or token.renew_at <= time.time():
        return None
    return token.value


def _remember(state: AccountState, token: Token) -> str:
    _mask(token.value)
    _LOCAL_TOKENS[state.account] = token
    return token.value


def _login_block_wait(block: LoginBlocked, started: float, max_wait: float) -> float:
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


class _Pacer:
    """Send times (epoch seconds) from one of the account's shared budgets, reserved
    ``RESERVE_SECONDS`` at a time.

    Pacing at ``RATE_HEADROOM`` leaves ``1 - RATE_HEADROOM`` of every second as slack (40 ms at 96%)
    for the network's jitter; a request may use a quarter of it by starting late. A slot missed by
    more (the process was held up: CPU, garbage collection, a busy event loop) is given up rather than
    used, since a late request lands right before the next process's punctual ones and crowds
    Copyleaks' one-second window.
    Not thread-safe: each client calls it under its own lock.
    """

    def __init__(self, state: AccountState, kind: str, per_second: float):
        self.state, self.kind = state, kind
        self.interval = 1.0 / (per_second * RATE_HEADROOM)
        self.block = max(1, int(per_second * RESERVE_SECONDS))
        self.lateness = (1 - RATE_HEADROOM) / 4
        self._slots: deque[float] = deque()

    def take_reserved(self) -> tuple[float, float] | None:
        """The next usable slot already reserved and the time to send by, if any (no database trip)."""
        usable = time.time() - self.lateness
        while self._slots and self._slots[0] < usable:
            self._slots.popleft()
        if not self._slots:
            return None
        slot = self._slots.popleft()
        return slot, slot + self.lateness

    def take(self) -> tuple[float, float]:
        """The next usable slot and the time to send by, reserving more when none is left. A slot the
        account gives ``now`` (its budget was idle) may be used once the round trip is back."""
        taken = self.take_reserved()
        if taken is None:
            start = self.state.reserve(self.kind, self.block, self.interval)  # a database round trip
            self._slots.extend(start + i * self.interval for i in range(1, self.block))
            taken = start, max(start, time.time()) + self.lateness
        return taken


def _pacers(settings: CopyleaksSettings, state: AccountState) -> dict[str, _Pacer]:
    """The budgets this account's requests are paced by: ``api`` and ``check`` (0 = no limit)."""
    budgets = {"api": settings.requests_per_second, "check": settings.checks_per_15_minutes / 900.0}
    return {kind: _Pacer(state, kind, rate) for kind, rate in budgets.items() if rate > 0}


def _mask(secret: str) -> None:
    """Register a secret with Airflow's log masker (a no-op outside Airflow's logging)."""
    try:
        from airflow.sdk.log import mask_secret

        mask_secret(secret)
    except Exception:  # masking must never break a request
        log.debug("could not register a secret with the log masker")


def _message(response: httpx.Response) -> str:
    text = response.text.strip()
    try:
        body = response.json()
        if isinstance(body, dict):
            text = str(body.get("message") or body.get("error") or body.get("detail") or text)
    except ValueError:
        pass
    return text[:500] or response.reason_phrase


def _retry_after(response: httpx.Response) -> float | None:
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


def _error_for(response: httpx.Response, *, login: bool = False) -> CopyleaksHTTPError:
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
        return CopyleaksRateLimitError(status, message, retry_after=_retry_after(response), **where)
    if status >= 500:
        return CopyleaksServerError(status, message, **where)
    return CopyleaksBadRequestError(status, message, **where)


def _is_transient(exc: BaseException) -> bool:
    return isinstance(exc, CopyleaksError) and not exc.permanent


class _RetryPolicy:
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


def _submit_path(scan_id: str) -> str:
    return SUBMIT_PATH.format(scan_id=quote(scan_id, safe=""))


def _check_path(scan_id: str) -> str:
    return CHECK_PATH.format(scan_id=quote(validate_scan_id(scan_id), safe=""))


def _check_form(image: bytes, file_name: str, model: str, sandbox: bool) -> dict[str, str]:
    """The form fields of a sync check, after validating what Copyleaks would refuse."""
    if not image:
        raise CopyleaksValidationError("the image is empty")
    if len(image) >= MAX_IMAGE_BYTES:
        raise CopyleaksValidationError(f"the image is {len(image)} bytes; Copyleaks accepts under 32 MB")
    validate_file_name(file_name)
    canonical_model(model)
    return {"filename": file_name, "model": model, "sandbox": str(sandbox).lower()}


# --- the hook ------------------------------------------------------------------------------------
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
        self.retry_policy = _RetryPolicy(max_retries, retry_base_wait, retry_max_wait)
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
    def _sync_pacers(self) -> dict[str, _Pacer]:
        return _pacers(self.settings, self.account_state)

    # sync API -----------------------------------------------------------------------------------
    def login(self) -> str:
        """The account's access token: the deployment's shared one, or (with retries) a new login."""
        return Retrying(**self.retry_policy.options())(self._token)

    def _token(self, stale: str | None = None, *, max_wait: float | None = None) -> str:
        """The shared token; ``stale`` is one Copyleaks just refused. A login block is waited out for
        up to ``max_wait`` (default: the connection's ``max_login_wait_seconds``), then reported."""
        if token := _local_token(self.account_state, stale):
            return token
        max_wait = self.settings.max_login_wait_seconds if max_wait is None else max_wait
        started = time.monotonic()
        while True:
            try:
                return _remember(self.account_state, self.account_state.login(stale, self._log_in))
            except LoginBlocked as block:
                time.sleep(_login_block_wait(block, started, max_wait))

    def _log_in(self) -> Token:
        """One login request (under the account's lock: no other process logs in meanwhile)."""
        response = self._send("POST", self.settings.identity_url + LOGIN_PATH, json=self._credentials())
        if response.status_code == 429:
            raise LoginBlocked(_retry_after(response) or DEFAULT_LOGIN_BLOCK_SECONDS)
        if response.is_error:
            raise _error_for(response, login=True)
        log.info(
            "Logged in to Copyleaks as %s (this token now serves the whole deployment)", self.settings.email
        )
        return _token_from(response)

    def submit_image(self, request: SubmitRequest) -> None:
        """Submit one image for async detection; Copyleaks POSTs the result to the request's webhook."""
        self._api("PUT", _submit_path(request.scan_id), json=request.to_wire())

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
        data = _check_form(image, file_name, model, self._sandbox(sandbox))
        response = self._api(
            "POST", _check_path(scan_id), kind="check", data=data, files={"image": (file_name, image)}
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
        """A validated request whose webhook URL and sandbox default come from the connection."""
        return SubmitRequest(
            scan_id=validate_scan_id(scan_id),
            url=url,
            file_name=file_name,
            model=model,
            webhook_url=self.webhook_url(scan_id),
            mask_type=mask_type,
            headers=headers,
            sandbox=self._sandbox(sandbox),
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
            _LOCAL_TOKENS.pop(self.account_state.account, None)
            Retrying(**self.retry_policy.options())(self._token, max_wait=0)
        except CopyleaksError as exc:
            return False, str(exc)
        return True, "Logged in to Copyleaks"

    # plumbing -----------------------------------------------------------------------------------
    def _credentials(self) -> dict[str, str]:
        return {"email": self.settings.email, "key": self.settings.api_key.get_secret_value()}

    def _sandbox(self, sandbox: bool | None) -> bool:
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
                response = self._send(method, self.settings.api_url + path, headers=_bearer(token), **kwargs)
                if response.status_code == 401:  # expired or revoked: one shared re-login, then give up
                    token = self._token(stale=token)
                    self._pace(kind)
                    response = self._send(
                        method, self.settings.api_url + path, headers=_bearer(token), **kwargs
                    )
                if response.is_error:
                    raise _error_for(response)
        return response


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _mask_settings(settings: CopyleaksSettings) -> None:
    for secret in (settings.api_key, settings.webhook_secret, *settings.previous_webhook_secrets):
        if secret is not None:
            _mask(secret.get_secret_value())


class CopyleaksAsyncClient:
    """Async Copyleaks client over one connection pool: ``async with hook.get_async_client() as c``.

    Shares the hook's settings, retry policy and the account's shared token and budget. Leaving the ``async
    with`` block cancels any ``submit_many`` still running, then closes the pool.
    """

    def __init__(self, hook: CopyleaksHook):
        self.hook = hook
        self.settings = hook.settings
        self._session: aiohttp.ClientSession | None = None  # created in the event loop that uses it
        self._login_lock = asyncio.Lock()
        self._pacers = _pacers(self.settings, hook.account_state)
        self._pace_lock = asyncio.Lock()
        self._workers: set[asyncio.Task] = set()

    async def __aenter__(self) -> CopyleaksAsyncClient:
        return self

    async def __aexit__(self, *exc_info) -> None:
        await _cancel(self._workers)
        if self._session is not None:
            await self._session.close()

    async def login(self) -> str:
        """The account's access token: the deployment's shared one, or (with retries) a new login."""
        return await AsyncRetrying(**self.hook.retry_policy.options())(self._token)

    async def submit_image(self, request: SubmitRequest) -> None:
        """Submit one image for async detection; Copyleaks POSTs the result to the request's webhook."""
        await self._api("PUT", _submit_path(request.scan_id), json=request.to_wire())

    async def check_image(
        self,
        scan_id: str,
        image: bytes,
        file_name: str,
        *,
        model: str = DEFAULT_MODEL,
        sandbox: bool | None = None,
    ) -> DetectionResponse:
        """Synchronous check of image bytes (for images Copyleaks cannot fetch)."""
        data = _check_form(image, file_name, model, self.hook._sandbox(sandbox))
        response = await self._api(
            "POST", _check_path(scan_id), kind="check", data=data, files={"image": (file_name, image)}
        )
        return DetectionResponse.model_validate(response.json())

    async def submit_many(self, requests: Iterable[SubmitRequest]) -> AsyncIterator[SubmitOutcome]:
        """Submit ``requests`` with at most ``max_concurrency`` in flight; yield outcomes as they finish.

        ``requests`` is consumed lazily. Each outcome carries its Copyleaks error, if any (after
        retries); other exceptions (say, the iterable raising) propagate. Breaking out early cancels
        the work still running, at the latest when the client closes; wrap the loop in
        ``contextlib.aclosing(client.submit_many(...))`` to cancel it at once.
        """
        pending = iter(requests)
        # Bounded, so workers do not run far ahead of a slow consumer.
        outcomes: asyncio.Queue[SubmitOutcome | _WorkerDone] = asyncio.Queue(
            maxsize=self.settings.max_concurrency * 2
        )

        async def worker() -> None:
            failure: Exception | None = None
            try:
                for request in pending:  # workers share one iterator: each request is taken once
                    try:
                        await self.submit_image(request)
                        outcome = SubmitOutcome(request)
                    except CopyleaksError as exc:
                        outcome = SubmitOutcome(request, exc)
                    await outcomes.put(outcome)
            except Exception as exc:
                failure = exc
            await outcomes.put(_WorkerDone(failure))

        workers = {asyncio.create_task(worker()) for _ in range(self.settings.max_concurrency)}
        self._workers |= workers
        try:
            finished = 0
            while finished < len(workers):
                item = await outcomes.get()
                if isinstance(item, _WorkerDone):
                    if item.failure is not None:
                        raise item.failure
                    finished += 1
                else:
                    yield item
        finally:
            await _cancel(workers)
            self._workers -= workers

    # plumbing -----------------------------------------------------------------------------------
    async def _token(self, stale: str | None = None) -> str:
        """As the hook's ``_token``, without blocking the event loop: the database and the login run
        in a thread, one at a time for this client's many concurrent requests."""
        state = self.hook.account_state
        if token := _local_token(state, stale):
            return token
        async with self._login_lock:
            if token := _local_token(state, stale):
                return token
            started = time.monotonic()
            while True:
                try:
                    token = await asyncio.to_thread(state.login, stale, self.hook._log_in)
                    return _remember(state, token)
                except LoginBlocked as block:
                    await asyncio.sleep(
                        _login_block_wait(block, started, self.settings.max_login_wait_seconds)
                    )

    async def _pace(self, kind: str) -> None:
        """Wait for this request's slot of the account's shared budget."""
        pacer = self._pacers.get(kind)
        if pacer is None:
            return
        for _ in range(MAX_MISSED_SLOTS):
            async with self._pace_lock:
                slot, send_by = pacer.take_reserved() or await asyncio.to_thread(pacer.take)
            await asyncio.sleep(max(0.0, slot - time.time()))
            if time.time() <= send_by:
                return
        log.warning("This process keeps missing its send slots (overloaded?); sending anyway")

    def _client(self) -> aiohttp.ClientSession:
        """The connection pool. aiohttp rather than httpx here: at ``max_concurrency`` requests in
        flight httpx's pool costs several times the CPU per request (the submit benchmark's profile)."""
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self.settings.max_concurrency),
                timeout=aiohttp.ClientTimeout(total=self.settings.timeout_seconds),
            )
        return self._session

    async def _send(
        self,
        method: str,
        url: str,
        *,
        headers: dict[str, str] | None = None,
        json: Any = None,
        data: dict[str, str] | None = None,
        files: dict[str, tuple[str, bytes]] | None = None,
    ) -> httpx.Response:
        """One HTTP exchange; the answer as an ``httpx.Response``, the type the shared error handling
        (and the sync client) reads."""
        form = None
        if files:
            form = aiohttp.FormData()
            for name, value in (data or {}).items():
                form.add_field(name, value)
            for name, (file_name, content) in files.items():
                form.add_field(name, content, filename=file_name, content_type="application/octet-stream")
        try:
            async with self._client().request(method, url, headers=headers, json=json, data=form) as answer:
                response = httpx.Response(
                    answer.status, headers=answer.raw_headers, content=await answer.read()
                )
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise CopyleaksNetworkError(f"{method} {urlsplit(url).path}: {type(exc).__name__}") from exc
        if response.is_error:  # the request is read by the error handling only; building it costs
            response.request = httpx.Request(method, url)
        return response

    async def _api(self, method: str, path: str, *, kind: str = "api", **kwargs) -> httpx.Response:
        url = self.settings.api_url + path
        # Most requests succeed at once, so the first attempt runs outside tenacity, whose per-call
        # cost was a quarter of the client's CPU in the submit benchmark. A transient failure of it
        # is replayed as attempt 1 of the usual retry loop: same waits, same attempt budget.
        try:
            return await self._api_attempt(method, url, kind, **kwargs)
        except CopyleaksError as exc:
            if exc.permanent:
                raise
            first_failure: CopyleaksError | None = exc
        async for attempt in AsyncRetrying(**self.hook.retry_policy.options()):
            with attempt:
                if first_failure is not None:
                    replay, first_failure = first_failure, None
                    raise replay
                response = await self._api_attempt(method, url, kind, **kwargs)
        return response

    async def _api_attempt(self, method: str, url: str, kind: str, **kwargs) -> httpx.Response:
        token = await self._token()
        await self._pace(kind)
        response = await self._send(method, url, headers=_bearer(token), **kwargs)
        if response.status_code == 401:  # expired or revoked: one shared re-login, then give up
            token = await self._token(stale=token)
            await self._pace(kind)
            response = await self._send(method, url, headers=_bearer(token), **kwargs)
        if response.is_error:
            raise _error_for(response)
        return response


@dataclass(frozen=True)
class _WorkerDone:
    failure: Exception | None = None


async def _cancel(tasks: set[asyncio.Task]) -> None:
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
