"""``CopyleaksAsyncClient``: many requests over one connection pool, with bounded concurrency.

The hook's async counterpart (``hook.get_async_client()``), used to submit a batch of images: it shares
the hook's settings and retry policy and the account's token and budget, and sends with aiohttp.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from datetime import date
from typing import Any, Protocol
from urllib.parse import urlsplit

import aiohttp
import httpx
from tenacity import AsyncRetrying

from copyleaks_provider.account.credits import CREDITS_PATH, parse_credit_balance, usage_history_path
from copyleaks_provider.account.pacing import MAX_MISSED_SLOTS, pacers
from copyleaks_provider.account.state import AccountState, LoginBlocked, Token
from copyleaks_provider.account.tokens import bearer, local_token, login_block_wait, remember
from copyleaks_provider.exceptions import CopyleaksError, CopyleaksNetworkError
from copyleaks_provider.models import DetectionResponse
from copyleaks_provider.retries import RetryPolicy, error_for
from copyleaks_provider.scan_ids import DEFAULT_MODEL
from copyleaks_provider.settings import CopyleaksSettings
from copyleaks_provider.validation import SubmitRequest, check_form, check_path, submit_path

log = logging.getLogger(__name__)


class AccountSession(Protocol):
    """What the async client shares with the hook that makes it (``CopyleaksHook``): the connection's
    settings, the retry policy, the account's shared state and its one way to log in."""

    settings: CopyleaksSettings
    retry_policy: RetryPolicy

    @property
    def account_state(self) -> AccountState: ...

    def log_in(self) -> Token: ...

    def sandbox_or_default(self, sandbox: bool | None) -> bool: ...


@dataclass(frozen=True)
class SubmitOutcome:
    """What became of one request of ``submit_many``: ``error`` is None when Copyleaks accepted it."""

    request: SubmitRequest
    error: CopyleaksError | None = None

    @property
    def scan_id(self) -> str:
        return self.request.scan_id


class CopyleaksAsyncClient:
    """Async Copyleaks client over one connection pool: ``async with hook.get_async_client() as c``.

    Shares the hook's settings, retry policy and the account's shared token and budget. Leaving the ``async
    with`` block cancels any ``submit_many`` still running, then closes the pool.
    """

    def __init__(self, hook: AccountSession):
        self.hook = hook
        self.settings = hook.settings
        self._session: aiohttp.ClientSession | None = None  # created in the event loop that uses it
        self._login_lock = asyncio.Lock()
        self._pacers = pacers(self.settings, hook.account_state)
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
        await self._api("PUT", submit_path(request.scan_id), json=request.to_wire())

    async def get_credits(self) -> int:
        """The credits the account has left (``GET /v3/scans/credits``)."""
        return parse_credit_balance((await self._api("GET", CREDITS_PATH)).json())

    async def get_usage_history(self, start: date, end: date) -> str:
        """The account's usage per day from ``start`` to ``end`` (both included), as Copyleaks' CSV."""
        return (await self._api("GET", usage_history_path(start, end))).text

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
        data = check_form(image, file_name, model, self.hook.sandbox_or_default(sandbox))
        response = await self._api(
            "POST", check_path(scan_id), kind="check", data=data, files={"image": (file_name, image)}
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
        if token := local_token(state, stale):
            return token
        async with self._login_lock:
            if token := local_token(state, stale):
                return token
            started = time.monotonic()
            while True:
                try:
                    token = await asyncio.to_thread(state.login, stale, self.hook.log_in)
                    return remember(state, token)
                except LoginBlocked as block:
                    await asyncio.sleep(
                        login_block_wait(block, started, self.settings.max_login_wait_seconds)
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
        """The connection pool: aiohttp, whose pool costs far less CPU per request than httpx's at
        ``max_concurrency`` requests in flight."""
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
        # The first attempt runs outside tenacity (most requests succeed at once, and tenacity's
        # per-call overhead is large on this hot path); a transient failure of it is replayed as
        # attempt 1 of the usual retry loop: same waits, same attempt budget.
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
        response = await self._send(method, url, headers=bearer(token), **kwargs)
        if response.status_code == 401:  # expired or revoked: one shared re-login, then give up
            token = await self._token(stale=token)
            await self._pace(kind)
            response = await self._send(method, url, headers=bearer(token), **kwargs)
        if response.is_error:
            raise error_for(response)
        return response


@dataclass(frozen=True)
class _WorkerDone:
    failure: Exception | None = None


async def _cancel(tasks: set[asyncio.Task]) -> None:
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
