"""The Copyleaks emulator app: the same paths, validations, status codes and webhooks as the real API.

Test infrastructure only: production code talks to it exactly as to Copyleaks (a connection's
identity and API base URLs both point here). Async throughout: an accepted submit is queued for the
worker pool (:mod:`copyleaks_emulator.pipeline`); CPU-bound decoding runs in threads.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse

from copyleaks_emulator.detector import ImageRejected, decode, detect
from copyleaks_emulator.faults import FaultInjector
from copyleaks_emulator.limits import AccountLimits
from copyleaks_emulator.pipeline import ScanJob, ScanPipeline
from copyleaks_emulator.samples import UnknownSample, sample_image
from copyleaks_emulator.settings import EmulatorSettings
from copyleaks_emulator.state import Admission, EmulatorState, ScanKey
from copyleaks_emulator.validation import (
    MAX_USAGE_DAYS,
    ApiError,
    check_scan_id,
    full_model_name,
    parse_form_check,
    parse_json_check,
    parse_usage_date,
    require,
    validate_submit,
)


async def _json_body(request: Request) -> Any:
    try:
        return await request.json()
    except ValueError as exc:
        raise ApiError(400, "the body is not valid JSON") from exc


def create_app(settings: EmulatorSettings | None = None) -> FastAPI:
    """A fresh emulator (its own state, counters and worker pool) with ``settings``."""
    settings = settings or EmulatorSettings()
    state = EmulatorState(settings)
    faults = FaultInjector(settings, state.counters)
    limits = AccountLimits(settings, state.counters)
    pipeline = ScanPipeline(settings, state, faults)

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI):
        await pipeline.start()
        try:
            yield
        finally:
            await pipeline.stop()

    app = FastAPI(title="Copyleaks emulator", lifespan=lifespan)
    app.state.emulator = state
    app.state.settings = settings

    @app.exception_handler(ApiError)
    async def _refused(_request: Request, exc: ApiError) -> JSONResponse:
        if exc.status == 400:
            state.counters["bad_requests"] += 1
        return JSONResponse(status_code=exc.status, content={"message": exc.message}, headers=exc.headers)

    async def _api_call(request: Request, kind: str = "api") -> str:
        """What every API call goes through: the bearer token, the account's rate limit (counted on
        arrival, before any injected latency), then latency and injected 429/5xx."""
        account = state.account_of(request.headers.get("authorization", ""))
        if account is None:
            await faults.api_latency()
            raise ApiError(401, "missing, invalid or expired access token", {"WWW-Authenticate": "Bearer"})
        limits.admit(kind, account)
        await faults.api_latency()
        faults.api_errors()
        return account

    # --- identity ------------------------------------------------------------------------------------
    @app.post("/v3/account/login/api")
    async def login(request: Request) -> dict[str, str]:
        body = await _json_body(request)
        require(
            isinstance(body, dict)
            and isinstance(body.get("email"), str)
            and isinstance(body.get("key"), str),
            "email and key are required",
        )
        limits.admit("login", body["email"])
        await faults.api_latency()
        token = state.login(body["email"], body["key"])
        if token is None:
            raise ApiError(401, "invalid email or API key")
        return token

    # --- the detector: async submit and sync check ---------------------------------------------------
    @app.put("/v1/ai-image-detector-async/{scan_id:path}/submit", status_code=201)
    async def submit(scan_id: str, request: Request) -> dict:
        await _api_call(request)
        body = await _json_body(request)
        validate_submit(scan_id, body)
        key = ScanKey(body["url"], body["fileName"], body["model"])
        admission = state.admit(scan_id, key)
        if admission is Admission.CONFLICT:
            raise ApiError(409, f"scan id {scan_id} is already used by another image")
        if admission is Admission.REPEAT:
            if settings.repeat_submission_status == 409:
                raise ApiError(409, f"scan id {scan_id} was already submitted")
            return {}
        sandbox = body.get("sandbox", False)
        if not sandbox:
            if not state.has_credit():
                raise ApiError(402, "no credits left on this account; top up or use sandbox")
            state.charge()
        state.accept(scan_id, key)
        pipeline.enqueue(
            ScanJob(
                scan_id=scan_id,
                url=body["url"],
                headers=tuple((name, value) for name, value in body.get("headers") or ()),
                webhook_url=body["webhooks"]["url"],
                model=full_model_name(body["model"]),
                sandbox=sandbox,
                developer_payload=body.get("developerPayload"),
            )
        )
        return {}

    @app.post("/v1/ai-image-detector/{scan_id:path}/check")
    async def check(scan_id: str, request: Request) -> dict:
        await _api_call(request, "check")
        check_scan_id(scan_id)
        if request.headers.get("content-type", "").startswith("multipart/form-data"):
            upload, _file_name, model, sandbox = parse_form_check(await request.form())
            data = await upload.read()
        else:
            data, _file_name, model, sandbox = parse_json_check(await _json_body(request))
        state.counters["checks"] += 1
        if not sandbox and not state.has_credit():
            raise ApiError(402, "no credits left on this account; top up or use sandbox")
        try:
            image = await asyncio.to_thread(decode, data)
        except ImageRejected as exc:
            raise ApiError(exc.code, str(exc)) from exc
        if not sandbox:
            state.charge()
        return detect(image, scan_id, model=full_model_name(model), sandbox=sandbox)

    # --- the account: credit balance and usage history ---------------------------------------------
    @app.get("/v3/scans/credits")
    async def credits(request: Request) -> dict[str, int]:
        await _api_call(request)
        return {"Amount": state.credits}

    @app.get("/v3/scans/usages/history")
    async def usage_history(request: Request, start: str | None = None, end: str | None = None) -> Response:
        await _api_call(request)
        first, last = parse_usage_date(start, "start"), parse_usage_date(end, "end")
        require(first <= last, "end must not be before start")
        require((last - first).days < MAX_USAGE_DAYS, f"at most {MAX_USAGE_DAYS} days at a time")
        return Response(state.usage_history(first, last), media_type="text/csv")

    # --- admin ---------------------------------------------------------------------------------------
    @app.get("/admin/state")
    async def admin_state() -> dict:
        return state.snapshot(pipeline.queue_depth)

    @app.patch("/admin/faults")
    async def admin_faults(request: Request) -> dict:
        changes = await _json_body(request)
        require(isinstance(changes, dict), "send a JSON object of knobs")
        try:
            settings.change_faults(changes)
        except ValueError as exc:
            raise ApiError(400, str(exc).splitlines()[0]) from exc
        return settings.faults()

    @app.post("/admin/reset")
    async def admin_reset(request: Request) -> dict:
        """Drop queued work and pending webhooks, clear scans and counters, refill the credits.

        An optional JSON body of settings (any field, e.g. ``{"credits": 5, "p_429": 0.1}``) is
        applied first; otherwise the settings are kept.
        """
        changes = await _json_body(request) if await request.body() else {}
        require(isinstance(changes, dict), "send a JSON object of settings, or nothing")
        try:
            settings.update(changes)
        except ValueError as exc:
            raise ApiError(400, str(exc).splitlines()[0]) from exc
        await pipeline.restart()
        state.reset()
        limits.reset()
        faults.reseed()
        return state.snapshot(pipeline.queue_depth)

    @app.post("/admin/revoke-tokens")
    async def admin_revoke_tokens() -> dict:
        """Invalidate every access token now, as if each had expired (tests of the re-login path)."""
        return {"revoked": state.revoke_tokens()}

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok"}

    # --- sample images -------------------------------------------------------------------------------
    @app.api_route("/samples/{name}", methods=["GET", "HEAD"])
    @app.api_route("/samples/{variant}/{name}", methods=["GET", "HEAD"])
    async def sample(name: str, variant: str | None = None) -> Response:
        try:
            data, media_type = await asyncio.to_thread(sample_image, name, variant)
        except UnknownSample as exc:
            return JSONResponse(status_code=404, content={"message": f"no sample {exc}"})
        return Response(content=data, media_type=media_type, headers={"Cache-Control": "max-age=86400"})

    return app
