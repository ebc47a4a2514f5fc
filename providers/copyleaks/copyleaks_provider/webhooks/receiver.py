"""The webhook receiver: the FastAPI app Copyleaks POSTs each scan's result to.

It authenticates every callback itself (mounted in the api-server, an app gets none of Airflow's auth):
the URL's token must be the HMAC of the URL's scan id (never the body's) with a current or previous
webhook secret, checked before the body is read; with ``require_callback_payload`` the body must also
echo the submission's ``developerPayload``. An authenticated body is never refused for what it holds (on
a 4xx Copyleaks retries, then drops it): one that is not a valid result or error is handed to the
:class:`~copyleaks_provider.webhooks.callbacks.CallbackSink` as unrecognised (as raw bytes when it cannot
be kept as JSON) and fails its scan; only a body naming another scan is refused. The sink stores every
callback durably before the 2xx. Answers: 200 ``stored`` / ``duplicate`` / ``failed_recorded`` /
``unrecognised_recorded``; 401 no token, 403 wrong token or payload, 413 too large, 422 a body for
another scan, 404 unknown scan (nothing written on any refusal); 503 sink or secrets unavailable.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import re
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import ValidationError

from copyleaks_provider.models import WebhookBody
from copyleaks_provider.settings import DEFAULT_CONN_ID, CopyleaksSettings
from copyleaks_provider.webhooks.auth import verify_callback_payload, verify_webhook_token
from copyleaks_provider.webhooks.callbacks import (
    Callback,
    CallbackOutcome,
    CallbackSink,
    CallbackSinkUnavailable,
)

log = logging.getLogger(__name__)

#: Where the api-server plugin mounts the receiver: webhook_base_url is the public form of
#: ``{api-server}/copyleaks-webhook``.
WEBHOOK_URL_PREFIX = "/copyleaks-webhook"
DEFAULT_MAX_BODY_BYTES = 8 * 1024 * 1024
#: How long secrets read from the connection are trusted before it is read again (rotation).
SECRETS_TTL_SECONDS = 60.0
#: After a failed read of the connection, how long before it is tried again (not once per request).
SECRETS_RETRY_SECONDS = 5.0
SecretsSource = Sequence[str] | Callable[[], Sequence[str]]


class SecretsUnavailable(Exception):
    """No webhook secret can be read (connection missing, unreadable, or without ``webhook_secret``)."""


@dataclass(frozen=True)
class _CallbackAuth:
    """What authenticates a callback: the accepted secrets, and whether its payload must echo the
    submission's."""

    secrets: list[str]
    require_payload: bool


class _WebhookSecrets:
    """The accepted webhook secrets: fixed, or read from a callable / the connection every ``ttl`` s.

    A failed re-read keeps the secrets last read (a flaky metadata database must not refuse callbacks),
    and is retried after ``SECRETS_RETRY_SECONDS``. ``require_payload``: None: the connection's
    ``require_callback_payload`` when the secrets come from it, else False.
    """

    def __init__(self, source: SecretsSource | None, conn_id: str, ttl: float, require_payload: bool | None):
        self._source = source
        self._conn_id = conn_id
        self._ttl = ttl
        self._require_payload = require_payload
        self._cached = _CallbackAuth([], bool(require_payload))
        self._next_read = float("-inf")
        self._lock = asyncio.Lock()

    def _read(self) -> _CallbackAuth:
        if callable(self._source):
            return _CallbackAuth([s for s in self._source() if s], bool(self._require_payload))
        from airflow.sdk import BaseHook

        settings = CopyleaksSettings.from_connection(BaseHook.get_connection(self._conn_id))
        required = self._require_payload
        if required is None:
            required = settings.require_callback_payload
        return _CallbackAuth(settings.webhook_secrets, required)

    async def get(self) -> _CallbackAuth:
        if self._source is not None and not callable(self._source):
            auth = _CallbackAuth([s for s in self._source if s], bool(self._require_payload))
        else:
            if time.monotonic() >= self._next_read:
                async with self._lock:
                    if time.monotonic() >= self._next_read:
                        await self._refresh()
            auth = self._cached
        if not auth.secrets:
            raise SecretsUnavailable(f"no webhook_secret in the {self._conn_id!r} connection")
        return auth

    async def _refresh(self) -> None:
        try:
            self._cached = await asyncio.to_thread(self._read)
            self._next_read = time.monotonic() + self._ttl
        except Exception as exc:  # never log the exception text: a validation error may echo a secret
            self._next_read = time.monotonic() + SECRETS_RETRY_SECONDS
            log.warning(
                "Cannot read the webhook secrets from the %r connection (%s)%s",
                self._conn_id,
                type(exc).__name__,
                "; keeping the ones read before" if self._cached.secrets else "",
            )


class _BodyTooLarge(Exception):
    pass


async def _read_body(request: Request, limit: int) -> bytes:
    """The body, refused as soon as it is known to exceed ``limit`` (declared or streamed)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _BodyTooLarge
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _BodyTooLarge
        chunks.append(chunk)
    return b"".join(chunks)


def _problem(status: int, message: str) -> JSONResponse:
    return JSONResponse(status_code=status, content={"detail": message})


def _shown(scan_id: str) -> str:
    """The scan id as it may appear in a log line: it comes from the URL, so bounded and escaped."""
    return repr(scan_id[:64])


_TOKEN_IN_PATH = re.compile(r"(/callbacks/.+/)[^/]+$")


class _RedactTokenInPath:
    """Replace the callback token in ``scope["path"]`` with ``***`` once the request is answered.

    The token is a per-scan credential. Access logs that run after the app, like the Airflow
    api-server's ``HttpAccessLogMiddleware``, read ``scope["path"]`` from the same scope dict that
    Starlette's ``Mount`` passes down, so they log the redacted path.
    """

    def __init__(self, app: Any):
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        try:
            await self.app(scope, receive, send)
        finally:
            if scope["type"] == "http" and "/callbacks/" in scope.get("path", ""):
                scope["path"] = _TOKEN_IN_PATH.sub(r"\1***", scope["path"])
                if isinstance(scope.get("raw_path"), bytes):
                    scope["raw_path"] = scope["path"].encode("utf-8", "replace")


#: Bounds of the validation summary stored as part of a scan's ``last_error``.
_SUMMARY_PROBLEMS, _SUMMARY_PART_CHARS, _SUMMARY_CHARS = 5, 120, 600


def _validation_summary(exc: ValidationError) -> str:
    """Where and what, never the offending values (they may be large or hostile), bounded."""
    errors = exc.errors(include_url=False, include_input=False, include_context=False)
    problems = []
    for error in errors[:_SUMMARY_PROBLEMS]:
        where = ".".join(str(part)[:40] for part in error["loc"]) or "body"
        problems.append(f"{where}: {error['msg']}"[:_SUMMARY_PART_CHARS])
    if len(errors) > _SUMMARY_PROBLEMS:
        problems.append(f"and {len(errors) - _SUMMARY_PROBLEMS} more")
    return "; ".join(problems)[:_SUMMARY_CHARS]


_JSON_TYPES = {list: "an array", str: "a string", bool: "a boolean", int: "a number", float: "a number"}


def _not_an_object(raw: Any) -> str:
    return f"the body is {_JSON_TYPES.get(type(raw), 'null')}, not a JSON object"


class _NotKeepableAsJson(ValueError):
    """The body parses, but not into JSON a database keeps (the message says why)."""


def _reject_constant(name: str) -> Any:
    """NaN and Infinity are not JSON (Python's parser accepts them; PostgreSQL's JSON does not)."""
    raise _NotKeepableAsJson(f"the body holds {name}, which is not JSON")


def _finite_float(text: str) -> float:
    """A JSON number as a float; one no float holds (``1e400``) would be stored as Infinity."""
    value = float(text)
    if math.isinf(value):
        raise _NotKeepableAsJson("the body holds a number beyond the range of a 64-bit float")
    return value


def _read_callback(scan_id: str, raw_bytes: bytes) -> Callback:
    """The callback of an authenticated body: recognised (validated), unrecognised JSON, or unreadable."""
    try:
        raw = json.loads(raw_bytes, parse_constant=_reject_constant, parse_float=_finite_float)
    except RecursionError:
        return Callback.of_unreadable(scan_id, raw_bytes, "the body is JSON nested too deeply to keep")
    except _NotKeepableAsJson as exc:
        return Callback.of_unreadable(scan_id, raw_bytes, str(exc))
    except ValueError:  # not JSON, not UTF-8, or an integer of more digits than Python parses
        return Callback.of_unreadable(scan_id, raw_bytes, "the body is not JSON")
    if not isinstance(raw, dict):
        return Callback(scan_id, None, raw, problem=_not_an_object(raw), raw_bytes=raw_bytes)
    try:
        return Callback(scan_id, WebhookBody.model_validate(raw), raw, raw_bytes=raw_bytes)
    except ValidationError as exc:
        return Callback(scan_id, None, raw, problem=_validation_summary(exc), raw_bytes=raw_bytes)


def _names_another_scan(scan_id: str, raw: Any) -> bool:
    """True when the body carries ``scannedDocument.scanId`` and it is not the URL's scan id."""
    document = raw.get("scannedDocument") if isinstance(raw, dict) else None
    named = document.get("scanId") if isinstance(document, dict) else None
    return isinstance(named, str) and named != scan_id


def _echoes_payload(callback: Callback, secrets: list[str]) -> bool:
    """True when the body's ``developerPayload`` is the one the submission of its scan sent."""
    payload = callback.raw.get("developerPayload") if isinstance(callback.raw, dict) else None
    return isinstance(payload, str) and verify_callback_payload(secrets, callback.scan_id, payload)


def create_receiver_app(
    sink: CallbackSink,
    *,
    webhook_secrets: SecretsSource | None = None,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    conn_id: str = DEFAULT_CONN_ID,
    secrets_ttl_seconds: float = SECRETS_TTL_SECONDS,
    require_callback_payload: bool | None = None,
) -> FastAPI:
    """The receiver app, storing into ``sink``; nothing is read until the first request.

    ``webhook_secrets``: a list (fixed), or a callable re-read every ``secrets_ttl_seconds``; default:
    the current and previous secrets of the Airflow connection ``conn_id``, re-read likewise.
    ``require_callback_payload``: refuse callbacks that do not echo their submission's payload; None:
    the connection's setting (False with secrets given here).
    """
    secrets = _WebhookSecrets(webhook_secrets, conn_id, secrets_ttl_seconds, require_callback_payload)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        await sink.close()

    app = FastAPI(
        title="Copyleaks webhook receiver",
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
        lifespan=lifespan,
    )

    app.add_middleware(_RedactTokenInPath)

    @app.post("/callbacks/{scan_id}")
    async def callback_without_token(scan_id: str) -> JSONResponse:
        log.info("Callback for %s refused: no token in the URL", _shown(scan_id))
        return _problem(401, "missing callback token")

    # ``:path`` because Copyleaks' scan id alphabet includes "/" (sent percent-encoded, decoded by the
    # server before routing); the token is always the last segment.
    @app.post("/callbacks/{scan_id:path}/{token}")
    async def callback(scan_id: str, token: str, request: Request) -> JSONResponse:
        try:
            auth = await secrets.get()
        except SecretsUnavailable:
            log.warning("Callback for %s refused: no webhook secret configured", _shown(scan_id))
            return _problem(503, "the receiver is not configured yet; retry later")
        if not verify_webhook_token(auth.secrets, scan_id, token):
            log.info("Callback for %s refused: bad token", _shown(scan_id))
            return _problem(403, "invalid callback token")

        try:
            raw_bytes = await _read_body(request, max_body_bytes)
        except _BodyTooLarge:
            log.info("Callback for %s refused: body over %d bytes", _shown(scan_id), max_body_bytes)
            return _problem(413, f"body larger than {max_body_bytes} bytes")
        callback = _read_callback(scan_id, raw_bytes)
        if auth.require_payload and not _echoes_payload(callback, auth.secrets):
            log.warning("Callback for %s refused: it does not echo its submission's payload", _shown(scan_id))
            return _problem(403, "developerPayload is not this submission's")
        if _names_another_scan(scan_id, callback.raw):
            log.info("Callback for %s refused: body is for another scan", _shown(scan_id))
            return _problem(422, "scannedDocument.scanId does not match the callback URL")
        if callback.body is None:
            log.warning("Callback for %s not recognised: %s", _shown(scan_id), callback.problem)

        try:
            outcome = await sink.store(callback)
        except (CallbackSinkUnavailable, OSError) as exc:
            # OSError covers refused connections and timeouts (TimeoutError is an OSError).
            log.warning("Callback for %s not stored, storage unavailable (%s)", _shown(scan_id), _cause(exc))
            return _problem(503, "the callback store is unavailable; retry later")
        if outcome == CallbackOutcome.UNKNOWN_SCAN:
            log.info("Callback for %s refused: unknown scan", _shown(scan_id))
            return _problem(404, "unknown scan")
        return JSONResponse(status_code=200, content={"status": outcome.value})

    @app.get("/health")
    async def health() -> JSONResponse:
        """200 when the sink can store, 503 otherwise (for load balancers and compose healthchecks)."""
        try:
            await sink.check()
        except (CallbackSinkUnavailable, OSError) as exc:
            log.warning("Health check: callback store unreachable (%s)", _cause(exc))
            return _problem(503, "callback store unreachable")
        return JSONResponse({"status": "ok"})

    return app


def _cause(exc: BaseException) -> str:
    """The exception's type and its cause's (never its text: a driver's message may hold a DSN)."""
    cause = exc.__cause__
    return type(exc).__name__ + (f" from {type(cause).__name__}" if cause is not None else "")
