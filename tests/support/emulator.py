"""The Copyleaks emulator and a webhook recorder on real ports (a pytest plugin, registered by
tests/conftest.py), and the raw API calls the emulator's own tests make.

``emulator``: one server per test session, reset to default settings (fresh scans, counters and
credits; queued work and pending webhooks dropped) before and after each test, so tests are isolated
without paying a server start each. ``start_emulator(**settings)``: a dedicated server with custom
settings, stopped after the test. Both default to fast webhook retries (0.05 s backoff base).
``webhook_recorder``: a tiny webhook target and image host that records what the emulator sends
(a stand-in for the real receiver in the emulator's own tests).
"""

from __future__ import annotations

import asyncio
import base64
import json
import threading
import time
from collections.abc import Callable, Iterator
from urllib.parse import quote

import httpx
import pytest
from fastapi import FastAPI, Request, Response
from fastapi.responses import RedirectResponse, StreamingResponse

from copyleaks_emulator import EmulatorSettings, create_app
from copyleaks_emulator.samples import sample_image
from copyleaks_provider.settings import CopyleaksSettings
from image_audit_dev.servers import BackgroundServer
from tests.support.polling import wait_for

#: Tests shrink the webhook retry backoff from about a minute to well under a second.
TEST_DEFAULTS = {"webhook_retry_base_seconds": 0.05}


class RunningEmulator:
    """A started emulator and the handles tests use: credentials, counters, fault knobs."""

    def __init__(self, settings: EmulatorSettings):
        self.settings = settings
        self.server = BackgroundServer(create_app(settings)).start()
        self.url = self.server.url
        self.email, self.api_key = next(iter(settings.accounts.items()))

    def state(self) -> dict:
        return httpx.get(f"{self.url}/admin/state").raise_for_status().json()

    def set_faults(self, **knobs) -> dict:
        return httpx.patch(f"{self.url}/admin/faults", json=knobs).raise_for_status().json()

    def reset(self, **settings) -> dict:
        """Clear scans and counters, drop pending work; ``settings`` (any field) are applied first."""
        return httpx.post(f"{self.url}/admin/reset", json=settings).raise_for_status().json()

    def wait_idle(self, timeout: float = 60.0) -> dict:
        """Wait until every accepted scan has been delivered (or given up on); returns the state."""

        def idle() -> dict | None:
            state = self.state()
            return state if state["queue_depth"] == 0 and state["in_flight"] == 0 else None

        return wait_for(idle, "the emulator idle (no scan queued or in flight)", timeout, 0.02)

    def sample_url(self, name: str, variant: str | None = None) -> str:
        return f"{self.url}/samples/{variant + '/' if variant else ''}{name}"

    def connection_settings(
        self, webhook_base_url: str | None = None, webhook_secret: str | None = None, **extra
    ) -> CopyleaksSettings:
        """Copyleaks connection settings whose identity and API URLs both point at this emulator."""
        return CopyleaksSettings(
            email=self.email,
            api_key=self.api_key,
            identity_url=self.url,
            api_url=self.url,
            webhook_base_url=webhook_base_url,
            webhook_secret=webhook_secret,
            **extra,
        )

    def stop(self) -> None:
        self.server.stop()


@pytest.fixture
def start_emulator() -> Iterator[Callable[..., RunningEmulator]]:
    """Start emulators with custom settings; all are stopped after the test."""
    started: list[RunningEmulator] = []

    def start(**settings) -> RunningEmulator:
        emulator = RunningEmulator(EmulatorSettings(**{**TEST_DEFAULTS, **settings}))
        started.append(emulator)
        return emulator

    yield start
    for emulator in started:
        emulator.stop()


@pytest.fixture(scope="session")
def _shared_emulator() -> Iterator[RunningEmulator]:
    emulator = RunningEmulator(EmulatorSettings(**TEST_DEFAULTS))
    yield emulator
    emulator.stop()


@pytest.fixture
def emulator(_shared_emulator: RunningEmulator) -> Iterator[RunningEmulator]:
    """A fresh-state emulator with default settings (fast webhook retries)."""
    defaults = EmulatorSettings(**TEST_DEFAULTS).model_dump()
    _shared_emulator.reset(**defaults)
    yield _shared_emulator
    _shared_emulator.reset(**defaults)


class WebhookRecorder:
    """A webhook target and image host recording what it receives.

    ``POST /hook``: records the body (answers ``fail_status`` to the next ``fail_next`` calls).
    Image routes: ``/plain/{name}`` (a sample), ``/private/{name}`` (403 without
    ``Authorization: Bearer bucket-token``), ``/redirect/{name}`` (302 to plain), ``/slow/{name}``
    (waits ``slow_seconds``; ``max_concurrent`` fetches are tracked), ``/html``, ``/oversized``
    (33 MB streamed; ``?declared=1`` also sends Content-Length).
    """

    OVERSIZED_MB = 33

    def __init__(self):
        self._received = threading.Condition()  # notified at every recorded body
        self.server = BackgroundServer(self._app()).start()
        self.url = self.server.url
        self.clear()

    def clear(self) -> None:
        with self._received:
            self.bodies: list[dict] = []
        self.arrivals: list[float] = []  # time.monotonic() of every POST, acknowledged or not
        self.fetch_headers: list[dict[str, str]] = []
        self.fail_next = 0
        self.fail_status = 500
        self.slow_seconds = 0.2
        self.concurrent = self.max_concurrent = 0
        self._lock = threading.Lock()

    @property
    def hook_url(self) -> str:
        return f"{self.url}/hook"

    def image_url(self, route: str, name: str = "img-00005.jpg") -> str:
        return f"{self.url}/{route}/{name}"

    def wait_for(self, n: int, timeout: float = 20.0) -> list[dict]:
        """The recorded bodies once there are ``n`` (or the timeout passed)."""
        with self._received:
            self._received.wait_for(lambda: len(self.bodies) >= n, timeout)
            return list(self.bodies)

    def _app(self) -> FastAPI:
        app = FastAPI()

        @app.post("/hook")
        async def hook(request: Request) -> Response:
            self.arrivals.append(time.monotonic())
            if self.fail_next > 0:
                self.fail_next -= 1
                return Response(status_code=self.fail_status)
            body = await request.json()
            with self._received:
                self.bodies.append(body)
                self._received.notify_all()
            return Response(status_code=200)

        def image(name: str) -> Response:
            data, media_type = sample_image(name)
            return Response(data, media_type=media_type)

        @app.get("/plain/{name}")
        async def plain(name: str) -> Response:
            return image(name)

        @app.get("/private/{name}")
        async def private(name: str, request: Request) -> Response:
            self.fetch_headers.append(dict(request.headers))
            if request.headers.get("authorization") != "Bearer bucket-token":
                return Response(status_code=403)
            return image(name)

        @app.get("/redirect/{name}")
        async def redirect(name: str) -> Response:
            return RedirectResponse(f"/plain/{name}", status_code=302)

        @app.get("/slow/{name}")
        async def slow(name: str) -> Response:
            with self._lock:
                self.concurrent += 1
                self.max_concurrent = max(self.max_concurrent, self.concurrent)
            try:
                await asyncio.sleep(self.slow_seconds)  # the behaviour served: a slow image host
            finally:
                with self._lock:
                    self.concurrent -= 1
            return image(name)

        @app.get("/html/{name}")
        async def html(name: str) -> Response:
            return Response("<html><body>not an image</body></html>", media_type="text/html")

        @app.get("/oversized/{name}")
        async def oversized(name: str, declared: bool = False) -> Response:
            async def megabytes():
                for _ in range(self.OVERSIZED_MB):
                    yield bytes(1024 * 1024)

            size = self.OVERSIZED_MB * 1024 * 1024
            headers = {"Content-Length": str(size)} if declared else None
            return StreamingResponse(megabytes(), media_type="image/png", headers=headers)

        return app


@pytest.fixture(scope="session")
def _shared_recorder() -> Iterator[WebhookRecorder]:
    recorder = WebhookRecorder()
    yield recorder
    recorder.server.stop()


@pytest.fixture
def webhook_recorder(_shared_recorder: WebhookRecorder) -> WebhookRecorder:
    """A webhook target with nothing recorded yet."""
    _shared_recorder.clear()
    return _shared_recorder


def copyleaks_connection(emulator, webhook_base_url: str | None, webhook_secret: str, **extra) -> str:
    """The Airflow connection (JSON, for ``AIRFLOW_CONN_...``) of ``emulator``'s account: any object
    with ``url``, ``email`` and ``api_key``, running in this process or another."""
    return json.dumps(
        {
            "conn_type": "copyleaks",
            "login": emulator.email,
            "password": emulator.api_key,
            "extra": {
                "identity_url": emulator.url,
                "api_url": emulator.url,
                "webhook_base_url": webhook_base_url,
                "webhook_secret": webhook_secret,
                **extra,
            },
        }
    )


# --- the emulator's API, called raw (its own tests) ------------------------------------------------------
SUBMIT = "/v1/ai-image-detector-async/{}/submit"
CHECK = "/v1/ai-image-detector/{}/check"
LOGIN = "/v3/account/login/api"


def login(emulator) -> dict:
    response = httpx.post(f"{emulator.url}{LOGIN}", json={"email": emulator.email, "key": emulator.api_key})
    response.raise_for_status()
    return response.json()


def auth(emulator) -> dict[str, str]:
    return {"Authorization": f"Bearer {login(emulator)['access_token']}"}


def submit_body(emulator, recorder, name: str = "img-00001.jpg", **overrides) -> dict:
    body = {
        "url": emulator.sample_url(name),
        "fileName": name,
        "model": "ai-image-1-ultra",
        "webhooks": {"url": recorder.hook_url},
        "developerPayload": "payload-1",
    }
    return {**body, **overrides}


def put(emulator, scan_id: str, body, headers=None) -> httpx.Response:
    headers = auth(emulator) if headers is None else headers
    return httpx.put(f"{emulator.url}{SUBMIT.format(quote(scan_id, safe=''))}", json=body, headers=headers)


def check_json(emulator, scan_id: str, data: bytes, headers=None, **fields) -> httpx.Response:
    body = {"base64": base64.b64encode(data).decode(), "filename": "a.png", "model": "ai-image-1-ultra"}
    headers = auth(emulator) if headers is None else headers
    return httpx.post(f"{emulator.url}{CHECK.format(scan_id)}", json={**body, **fields}, headers=headers)


def check_form(emulator, scan_id: str, data: bytes | None, **fields) -> httpx.Response:
    form = {"filename": "a.png", "model": "ai-image-1-ultra", "sandbox": "false", **fields}
    files = {"image": ("a.png", data, "image/png")} if data is not None else {"other": ("x", b"x")}
    return httpx.post(
        f"{emulator.url}{CHECK.format(scan_id)}", files=files, data=form, headers=auth(emulator), timeout=30
    )
