"""The async scan pipeline: a queue served by a bounded pool of workers.

A worker fetches the image URL (with the submit's custom headers), decodes it in a thread, builds the
detection response (or the error body) and hands it to delivery. A failed scan sends Copyleaks'
documented error webhook (``detector.error_body``) and, like Copyleaks, refunds the credit its submit
charged (sandbox scans cost nothing, so nothing to refund). ``queue_depth`` counts jobs no
worker has taken yet; ``scanning`` the jobs workers are scanning (never more than the pool); ``in_flight``
counts jobs being scanned plus webhooks not yet acknowledged or given up, so "idle" means both are zero.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

import anyio
import httpx
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt, wait_fixed

from copyleaks_emulator.delivery import WebhookSender
from copyleaks_emulator.detector import (
    DOCUMENTED_ERROR_SHAPE,
    DOWNLOAD_FAILED,
    MAX_BYTES,
    ImageRejected,
    check_size,
    decode,
    detect,
    error_body,
)
from copyleaks_emulator.faults import FaultInjector
from copyleaks_emulator.settings import EmulatorSettings
from copyleaks_emulator.state import EmulatorState

log = logging.getLogger(__name__)

FETCH_TIMEOUT = httpx.Timeout(30.0, connect=10.0)
FETCH_TRIES = 3


@dataclass(frozen=True)
class ScanJob:
    scan_id: str
    url: str
    headers: tuple[tuple[str, str], ...]
    webhook_url: str
    model: str
    sandbox: bool
    developer_payload: str | None


class ScanPipeline:
    def __init__(
        self,
        settings: EmulatorSettings,
        state: EmulatorState,
        faults: FaultInjector,
        error_shape: str = DOCUMENTED_ERROR_SHAPE,
    ):
        self.settings = settings
        self.state = state
        self.faults = faults
        #: The error webhook's shape (``detector.error_body``): Copyleaks' documented one by default.
        self.error_shape = error_shape
        self._queue: asyncio.Queue[ScanJob] | None = None
        self._tasks: set[asyncio.Task] = set()
        self._client: httpx.AsyncClient | None = None
        self._sender: WebhookSender | None = None

    # --- lifecycle (bound to the server's event loop) ----------------------------------------------
    async def start(self) -> None:
        limits = httpx.Limits(max_connections=self.settings.workers * 2)
        self._client = httpx.AsyncClient(limits=limits, headers={"User-Agent": "copyleaks-emulator"})
        # httpx loads anyio's asyncio backend on its first request: import it now, not while the first
        # scan runs, when the imports would hold the event loop (the account limits' arrival clock).
        await anyio.sleep(0)
        self._start_workers()

    async def stop(self) -> None:
        await self._cancel_all()
        if self._client is not None:
            await self._client.aclose()

    async def restart(self) -> None:
        """Forget every queued job and pending webhook (``POST /admin/reset``)."""
        await self._cancel_all()
        self._start_workers()

    def _start_workers(self) -> None:
        assert self._client is not None
        self._queue = asyncio.Queue()
        self._sender = WebhookSender(self.settings, self.faults, self._client)
        for _ in range(self.settings.workers):
            self._spawn(self._worker())

    async def _cancel_all(self) -> None:
        tasks, self._tasks = self._tasks, set()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _spawn(self, coroutine) -> None:
        task = asyncio.create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- work ----------------------------------------------------------------------------------------
    @property
    def queue_depth(self) -> int:
        return self._queue.qsize() if self._queue is not None else 0

    def enqueue(self, job: ScanJob) -> None:
        if self._queue is None:
            raise RuntimeError("the emulator is not running (its lifespan has not started)")
        self._queue.put_nowait(job)

    async def _worker(self) -> None:
        assert self._queue is not None
        while True:
            job = await self._queue.get()
            self.state.in_flight += 1
            self.state.scanning += 1
            try:
                body = await self._scan(job)
            except Exception:  # a worker must survive anything one job does
                log.exception("scan %s failed inside the emulator", job.scan_id)
                self.state.in_flight -= 1
                continue
            finally:
                self.state.scanning -= 1
            self._dispatch(job, body)

    async def _scan(self, job: ScanJob) -> dict:
        try:
            data = await self._fetch(job)
            image = await asyncio.to_thread(decode, data)
        except ImageRejected as exc:
            self.state.counters["scans_failed"] += 1
            if not job.sandbox:
                self.state.refund()  # Copyleaks charges only completed scans
            body = error_body(job.scan_id, exc, self.error_shape)
        else:
            self.state.counters["scans_completed"] += 1
            body = detect(image, job.scan_id, model=job.model, sandbox=job.sandbox)
        if job.developer_payload is not None:
            body["developerPayload"] = job.developer_payload
        return body

    async def _fetch(self, job: ScanJob) -> bytes:
        """GET the image; a dropped connection (a pooled keep-alive connection the server had closed,
        a reset) is tried again, as any robust fetcher does, before the image counts as unfetchable."""
        retrying = AsyncRetrying(
            retry=retry_if_exception_type((httpx.NetworkError, httpx.RemoteProtocolError)),
            stop=stop_after_attempt(FETCH_TRIES),
            wait=wait_fixed(0.1),
            reraise=True,
        )
        try:
            return await retrying(self._fetch_once, job)
        except httpx.HTTPError as exc:
            raise ImageRejected(
                f"image could not be fetched ({type(exc).__name__})", DOWNLOAD_FAILED
            ) from exc

    async def _fetch_once(self, job: ScanJob) -> bytes:
        assert self._client is not None
        async with self._client.stream(
            "GET", job.url, headers=list(job.headers), timeout=FETCH_TIMEOUT, follow_redirects=True
        ) as response:
            if not response.is_success:
                raise ImageRejected(
                    f"image could not be fetched: the URL answered {response.status_code}", DOWNLOAD_FAILED
                )
            check_size(int(response.headers.get("content-length") or 0))
            chunks, size = [], 0
            async for chunk in response.aiter_bytes():
                size += len(chunk)
                if size >= MAX_BYTES:
                    check_size(size)
                chunks.append(chunk)
            return b"".join(chunks)

    def _dispatch(self, job: ScanJob, body: dict) -> None:
        """Roll the webhook faults; each copy to send keeps one unit of ``in_flight`` until done."""
        delays = self.faults.delivery_delays()
        self.state.in_flight += len(delays) - 1
        for delay in delays:
            self._spawn(self._deliver(job.webhook_url, body, delay))

    async def _deliver(self, url: str, body: dict, delay: float) -> None:
        assert self._sender is not None
        try:
            await self._sender.deliver(url, body, delay)
        finally:
            self.state.in_flight -= 1
