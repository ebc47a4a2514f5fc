"""A small fake of Copyleaks' login, submit and check endpoints for the provider's tests.

It records every request it receives and can be scripted to answer with errors (401, 429 with
Retry-After, 5xx, 400, 402, ...) a number of times before it answers normally, to slow answers down,
and to revoke the tokens it issued. Tests can wait until it has handled every request written to it
(``settled_count``) and have it serve requests of its own (``round_trips``), instead of sleeping.
Deliberately independent of the full emulator.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import numpy as np
from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse

from copyleaks_provider.hooks.copyleaks import CopyleaksHook
from copyleaks_provider.scan_ids import DEFAULT_MODEL, canonical_model
from copyleaks_provider.settings import CopyleaksSettings
from copyleaks_provider.validation import SubmitRequest

#: The model a detection names: the default one's full name, as Copyleaks reports it.
MODEL = canonical_model(DEFAULT_MODEL)
LOGIN = "login"
SUBMIT = "submit"
CHECK = "check"
#: The fake's own endpoint for ``round_trips``: answered like a submit (after ``delay``), not recorded.
PROBE_PATH = "/_fake/probe"


@dataclass
class Recorded:
    kind: str
    method: str
    path: str
    headers: dict[str, str]
    body: Any
    arrived: float


@dataclass
class Fault:
    status: int
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)


class FakeCopyleaks:
    """State and script of the fake; ``app`` is the ASGI app to run under ``BackgroundServer``."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._token_numbers = itertools.count(1)
        self._handling = 0  # HTTP requests the app is handling now (never reset: they are real)
        self._handling_changed = threading.Condition()
        self.url: str | None = None  # set by whoever runs ``app``; ``round_trips`` needs it
        self.reset()
        self.app = self._build_app()

    def reset(self) -> None:
        """Forget everything; requests still running from before no longer count or take faults."""
        with self._lock:
            self._generation = getattr(self, "_generation", 0) + 1
            self.requests: list[Recorded] = []
            self.faults: dict[str, deque[Fault]] = {LOGIN: deque(), SUBMIT: deque(), CHECK: deque()}
            self.issued_tokens: list[str] = []
            self.valid_tokens: set[str] = set()
            self.token_lifetime = timedelta(hours=48)
            self.delay = 0.0
            self.in_flight = 0
            self.max_in_flight = 0

    # scripting ----------------------------------------------------------------------------------
    def fail(self, kind: str, status: int, times: int = 1, *, body: Any = None, **headers: str) -> None:
        """Answer the next ``times`` requests of ``kind`` with ``status`` (then answer normally)."""
        with self._lock:
            self.faults[kind].extend(Fault(status, body, headers) for _ in range(times))

    def revoke_tokens(self) -> None:
        with self._lock:
            self.valid_tokens.clear()

    def received(self, kind: str | None = None) -> list[Recorded]:
        with self._lock:
            return [r for r in self.requests if kind is None or r.kind == kind]

    def count(self, kind: str | None = None) -> int:
        return len(self.received(kind))

    # waiting on the server ----------------------------------------------------------------------
    async def round_trips(self, times: int = 1) -> None:
        """Send ``times`` requests one after another, on a connection of their own, and await each answer.

        Each is handled as slowly as a submit (``delay``) and none is recorded: proof that the server
        went on serving (for ``times`` submits' time) while a test watched for requests that must not come.
        """
        async with httpx.AsyncClient(base_url=self.url, timeout=10) as client:
            for _ in range(times):
                (await client.put(PROBE_PATH)).raise_for_status()

    async def settled_count(self, kind: str | None = None, timeout: float = 10.0) -> int:
        """``count(kind)`` once every request written to the server before this call has been handled.

        The server's event loop reads every ready socket in the turn that accepts a new connection, so
        once a request on a new connection is answered, whatever clients had written before is being
        handled (or was dropped at their disconnect); then wait until no request is being handled.
        """
        await self.round_trips()

        def idle() -> bool:
            with self._handling_changed:
                return self._handling_changed.wait_for(lambda: self._handling == 0, timeout)

        if not await asyncio.to_thread(idle):
            raise AssertionError(f"the fake was still handling {self._handling} requests after {timeout} s")
        return self.count(kind)

    # app ----------------------------------------------------------------------------------------
    def _record(self, kind: str, request: Request, body: Any) -> None:
        raw_path = request.scope["raw_path"].decode()  # as sent, percent-encoding included
        record = Recorded(kind, request.method, raw_path, dict(request.headers), body, time.monotonic())
        with self._lock:
            self.requests.append(record)

    def _next_fault(self, kind: str) -> Fault | None:
        with self._lock:
            return self.faults[kind].popleft() if self.faults[kind] else None

    @staticmethod
    def _answer(fault: Fault) -> Response:
        body = fault.body if fault.body is not None else {"message": f"scripted {fault.status}"}
        return JSONResponse(body, status_code=fault.status, headers=fault.headers)

    def _authorized(self, request: Request) -> bool:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        with self._lock:
            return scheme == "Bearer" and token in self.valid_tokens

    async def _slowly(self) -> None:
        """Wait ``delay`` seconds, counting the requests waiting at the same time."""
        with self._lock:
            generation = self._generation
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            await asyncio.sleep(self.delay)  # the behaviour served: an answer ``delay`` s slow
        finally:
            with self._lock:
                if generation == self._generation:
                    self.in_flight -= 1

    def _build_app(self) -> FastAPI:
        app = FastAPI()
        app.add_middleware(_CountHandling, fake=self)

        @app.put(PROBE_PATH)
        async def probe() -> Response:
            await asyncio.sleep(self.delay)  # as slow as a submit: the behaviour served
            return Response(status_code=204)

        @app.post("/v3/account/login/api")
        async def login(request: Request) -> Response:
            self._record(LOGIN, request, await request.json())
            if fault := self._next_fault(LOGIN):
                return self._answer(fault)
            token = f"fake-access-token-{next(self._token_numbers):06d}"
            with self._lock:
                self.issued_tokens.append(token)
                self.valid_tokens.add(token)
                now = datetime.now(UTC)
                expires = now + self.token_lifetime
            return JSONResponse(
                {"access_token": token, ".issued": now.isoformat(), ".expires": expires.isoformat()}
            )

        @app.put("/v1/ai-image-detector-async/{scan_id:path}/submit")
        async def submit(scan_id: str, request: Request) -> Response:
            self._record(SUBMIT, request, await request.json())
            fault = self._next_fault(SUBMIT)
            await self._slowly()
            if fault:
                return self._answer(fault)
            if not self._authorized(request):
                return JSONResponse({"message": "Unauthorized"}, status_code=401)
            return JSONResponse({}, status_code=201)

        @app.post("/v1/ai-image-detector/{scan_id:path}/check")
        async def check(scan_id: str, request: Request) -> Response:
            form = await request.form()
            image = form.get("image")
            fields = {k: v for k, v in form.items() if k != "image"}
            fields["image"] = (image.filename, await image.read()) if image is not None else None
            self._record(CHECK, request, fields)
            if fault := self._next_fault(CHECK):
                return self._answer(fault)
            if not self._authorized(request):
                return JSONResponse({"message": "Unauthorized"}, status_code=401)
            return JSONResponse(detection_response(scan_id))

        return app

    def _count_handling(self, change: int) -> None:
        with self._handling_changed:
            self._handling += change
            self._handling_changed.notify_all()


class _CountHandling:
    """ASGI middleware: the fake counts the HTTP requests it is handling, from start to end, whatever
    the end (an answer, an error, the client gone)."""

    def __init__(self, app, fake: FakeCopyleaks) -> None:
        self.app, self.fake = app, fake

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        self.fake._count_handling(+1)
        try:
            await self.app(scope, receive, send)
        finally:
            self.fake._count_handling(-1)


#: The mask ``detection_response`` answers with, on a 4 x 3 image: rows 1 and 2, and the last pixel.
MASK_HEIGHT, MASK_WIDTH = 4, 3
MASK_STARTS, MASK_LENGTHS = [3, 11], [6, 1]


def expected_mask() -> np.ndarray:
    mask = np.zeros((MASK_HEIGHT, MASK_WIDTH), dtype=bool)
    mask[1:3, :] = True
    mask[3, 2] = True
    return mask


def detection_response(scan_id: str) -> dict[str, Any]:
    return {
        "model": MODEL,
        "result": {"starts": MASK_STARTS, "lengths": MASK_LENGTHS},
        "summary": {"human": 5 / 12, "ai": 7 / 12},
        "imageInfo": {
            "shape": {"height": MASK_HEIGHT, "width": MASK_WIDTH},
            "metadata": {"issuedBy": "Example Camera Co"},
        },
        "scannedDocument": {
            "scanId": scan_id,
            "actualCredits": 1,
            "expectedCredits": 1,
            "creationTime": "2026-11-24T10:00:00Z",
        },
    }


# --- the provider's hook against the fake ------------------------------------------------------------
API_KEY = "test-api-key-" + uuid.uuid4().hex


WEBHOOK_SECRET = "test-webhook-secret-" + uuid.uuid4().hex


CDN_SECRET = "Bearer cdn-credential-" + uuid.uuid4().hex


WEBHOOK_BASE = "https://airflow.example.com/copyleaks-webhook"


PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64


def make_settings(url: str, **overrides) -> CopyleaksSettings:
    """Settings with a fresh email, so every test starts with an empty token cache."""
    values = {
        "email": f"auditor-{uuid.uuid4().hex[:8]}@example.com",
        "api_key": API_KEY,
        "identity_url": url,
        "api_url": url,
        "webhook_base_url": WEBHOOK_BASE,
        "webhook_secret": WEBHOOK_SECRET,
        "requests_per_second": 0,  # the fake has no account budget; the pacing tests set one
        **overrides,
    }
    return CopyleaksSettings(**values)


def make_hook(url: str, *, max_retries: int = 3, **overrides) -> CopyleaksHook:
    return CopyleaksHook(
        settings=make_settings(url, **overrides),
        max_retries=max_retries,
        retry_base_wait=0.01,
        retry_max_wait=0.05,
    )


def request_for(hook: CopyleaksHook, n: int = 1, **fields) -> SubmitRequest:
    return hook.build_submit_request(
        f"scan-{n:04d}", f"https://cdn.example.com/images/{n}.png", f"{n}.png", **fields
    )


def bearer(record) -> str:
    return record.headers["authorization"].removeprefix("Bearer ")
