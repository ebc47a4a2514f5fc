"""``CopyleaksHook`` (and its async client where both share a rule) against a fake of Copyleaks on a real
port (tests/support/fake_copyleaks.py): login and the token cache, retries, what goes on the wire, secrets."""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import httpx
import numpy as np
import pytest

import copyleaks_provider.account.state as account_state_module
import copyleaks_provider.account.tokens as account_tokens
from copyleaks_provider.exceptions import (
    CopyleaksAuthError,
    CopyleaksBadRequestError,
    CopyleaksConflictError,
    CopyleaksCreditsError,
    CopyleaksError,
    CopyleaksNetworkError,
    CopyleaksRateLimitError,
    CopyleaksServerError,
    CopyleaksValidationError,
)
from copyleaks_provider.hooks.copyleaks import CopyleaksHook
from copyleaks_provider.models import DetectionResponse
from copyleaks_provider.settings import CopyleaksSettings
from copyleaks_provider.validation import SubmitRequest
from copyleaks_provider.webhooks.auth import verify_callback_payload, verify_webhook_token
from image_audit_dev.servers import free_port
from tests.support.clock import FakeClock
from tests.support.fake_copyleaks import (
    API_KEY,
    CDN_SECRET,
    CHECK,
    LOGIN,
    PNG,
    SUBMIT,
    WEBHOOK_BASE,
    WEBHOOK_SECRET,
    bearer,
    expected_mask,
    make_hook,
    make_settings,
    request_for,
)


# --- login and the token cache -------------------------------------------------------------------
def test_one_login_serves_many_calls_sync_and_async(fake):
    hook = make_hook(fake.url)
    for n in range(3):
        hook.submit_image(request_for(hook, n))
    hook.check_image("scan-check", PNG, "photo.png")
    # Another hook on the same account, and the async client, share the process-wide token.
    same_account = CopyleaksHook(settings=hook.settings, retry_base_wait=0.01)
    same_account.submit_image(request_for(same_account, 9))

    async def submit_async():
        async with hook.get_async_client() as client:
            await client.submit_image(request_for(hook, 10))

    asyncio.run(submit_async())

    assert fake.count(LOGIN) == 1
    [token] = fake.issued_tokens
    assert hook.login() == token
    api_calls = fake.received(SUBMIT) + fake.received(CHECK)
    assert len(api_calls) == 6
    assert {bearer(r) for r in api_calls} == {token}
    assert fake.received(LOGIN)[0].body["email"] == hook.settings.email


def test_token_is_renewed_five_minutes_before_it_expires(fake):
    hook = make_hook(fake.url)  # Copyleaks' 48-hour token: renewed 5 minutes early, like the SDK
    hook.submit_image(request_for(hook, 1))
    token = hook.account_state.token()
    expires = datetime.now(UTC) + timedelta(hours=48)
    assert abs(token.renew_at - (expires - timedelta(minutes=5)).timestamp()) < 5
    assert token.value == fake.issued_tokens[0]


def test_a_short_lived_token_is_renewed_a_tenth_of_its_life_early_not_at_every_call(fake, monkeypatch):
    # A 5-minute margin would make a token of 4 minutes useless: every call would log in, and 12
    # logins in 15 minutes block the account.
    clock = FakeClock().install(monkeypatch, account_tokens, account_state_module)
    fake.token_lifetime = timedelta(minutes=4)
    hook = make_hook(fake.url)
    hook.submit_image(request_for(hook, 1))
    hook.submit_image(request_for(hook, 2))
    assert fake.count(LOGIN) == 1
    renew_at = hook.account_state.token().renew_at
    assert renew_at == pytest.approx(clock.time() + 4 * 60 - 24)  # a tenth of 4 minutes early
    clock.advance(renew_at - clock.time() - 1)  # a second before: the token still serves
    hook.submit_image(request_for(hook, 3))
    assert fake.count(LOGIN) == 1
    clock.advance(1)
    hook.submit_image(request_for(hook, 4))
    assert fake.count(LOGIN) == 2
    first, second = fake.issued_tokens
    assert [bearer(r) for r in fake.received(SUBMIT)] == [first, first, first, second]


def test_a_401_logs_in_again_and_retries_once(fake):
    hook = make_hook(fake.url)
    hook.submit_image(request_for(hook, 1))
    fake.revoke_tokens()  # the cached token is no longer accepted
    hook.submit_image(request_for(hook, 2))

    old, new = fake.issued_tokens
    assert [bearer(r) for r in fake.received(SUBMIT)] == [old, old, new]
    assert fake.count(LOGIN) == 2


@pytest.mark.parametrize("use_async", [False, True], ids=["sync", "async"])
def test_a_second_401_is_an_auth_error_without_more_retries(fake, use_async):
    hook = make_hook(fake.url)
    fake.fail(SUBMIT, 401, times=2)
    with pytest.raises(CopyleaksAuthError) as raised:
        _submit(hook, request_for(hook), use_async)
    assert raised.value.status_code == 401
    assert fake.count(LOGIN) == 2
    assert fake.count(SUBMIT) == 2


@pytest.mark.parametrize("status", [400, 401, 403])
def test_a_refused_login_says_to_check_the_connection(fake, status):
    hook = make_hook(fake.url)
    fake.fail(LOGIN, status, body={"message": "Invalid credentials"})
    with pytest.raises(CopyleaksAuthError, match="check the email and API key") as raised:
        hook.submit_image(request_for(hook))
    assert API_KEY not in str(raised.value)
    assert fake.count(LOGIN) == 1  # not retried
    assert fake.count(SUBMIT) == 0


def test_login_retries_maintenance(fake):
    hook = make_hook(fake.url)
    fake.fail(LOGIN, 503, times=2)
    assert hook.login() == fake.issued_tokens[0]
    assert fake.count(LOGIN) == 3


def test_test_connection_logs_in(fake):
    hook = make_hook(fake.url)
    assert hook.test_connection() == (True, "Logged in to Copyleaks")
    fake.fail(LOGIN, 401)
    ok, message = hook.test_connection()  # logs in afresh, even with a cached token
    assert not ok
    assert "check the email and API key" in message
    assert API_KEY not in message
    assert fake.count(LOGIN) == 2


# --- retries and error mapping -------------------------------------------------------------------
@pytest.mark.parametrize("use_async", [False, True], ids=["sync", "async"])
def test_a_429_waits_at_least_retry_after(fake, use_async):
    hook = make_hook(fake.url)  # its own backoff is at most 0.06 s: only Retry-After explains a 1 s gap
    hook.login()
    fake.fail(SUBMIT, 429, **{"Retry-After": "1"})
    _submit(hook, request_for(hook), use_async)
    first, second = fake.received(SUBMIT)
    assert second.arrived - first.arrived >= 0.95


def test_retry_after_as_an_http_date(fake):
    hook = make_hook(fake.url, max_retries=0)
    when = datetime.now(UTC) + timedelta(seconds=30)
    fake.fail(SUBMIT, 429, **{"Retry-After": format_datetime(when, usegmt=True)})
    with pytest.raises(CopyleaksRateLimitError) as raised:
        hook.submit_image(request_for(hook))
    assert 25 < raised.value.retry_after <= 31
    assert not raised.value.permanent


@pytest.mark.parametrize("use_async", [False, True], ids=["sync", "async"])
@pytest.mark.parametrize("status", [429, 500, 502, 503])
def test_transient_errors_are_retried(fake, status, use_async):
    hook = make_hook(fake.url)
    fake.fail(SUBMIT, status, times=2)
    _submit(hook, request_for(hook), use_async)
    assert fake.count(SUBMIT) == 3


@pytest.mark.parametrize("use_async", [False, True], ids=["sync", "async"])
def test_retries_are_bounded(fake, use_async):
    hook = make_hook(fake.url, max_retries=2)
    fake.fail(SUBMIT, 503, times=5, body={"message": "Down for maintenance"})
    with pytest.raises(CopyleaksServerError, match="Down for maintenance") as raised:
        _submit(hook, request_for(hook), use_async)
    assert raised.value.status_code == 503
    assert fake.count(SUBMIT) == 3


@pytest.mark.parametrize(
    ("status", "error", "text"),
    [
        (400, CopyleaksBadRequestError, "fileName extension is not supported"),
        (422, CopyleaksBadRequestError, "fileName extension is not supported"),
        (402, CopyleaksCreditsError, "no credits left"),
        (403, CopyleaksAuthError, "fileName extension is not supported"),
        (409, CopyleaksConflictError, "fileName extension is not supported"),
    ],
)
@pytest.mark.parametrize("use_async", [False, True], ids=["sync", "async"])
def test_permanent_errors_are_not_retried(fake, status, error, text, use_async):
    hook = make_hook(fake.url)
    fake.fail(SUBMIT, status, body={"message": "fileName extension is not supported"})
    with pytest.raises(error, match=text) as raised:
        _submit(hook, request_for(hook), use_async)
    assert raised.value.status_code == status
    assert raised.value.permanent
    assert fake.count(SUBMIT) == 1


def test_a_plain_text_error_message_is_kept(fake):
    hook = make_hook(fake.url)
    fake.fail(SUBMIT, 400, body="Scan id already used")
    with pytest.raises(CopyleaksBadRequestError, match="Scan id already used"):
        hook.submit_image(request_for(hook))


def test_connection_refused_is_a_network_error():
    closed = f"http://127.0.0.1:{free_port()}"
    hook = make_hook(closed, max_retries=1)
    with pytest.raises(CopyleaksNetworkError, match="ConnectError") as raised:
        hook.login()
    assert not raised.value.permanent
    with pytest.raises(CopyleaksNetworkError):
        asyncio.run(_submit_async(hook, request_for(hook)))


def test_a_timeout_is_a_network_error_and_retried(fake):
    hook = make_hook(fake.url, max_retries=1, timeout_seconds=0.2)
    hook.login()
    fake.delay = 1.0
    with pytest.raises(CopyleaksNetworkError, match="ReadTimeout"):
        hook.submit_image(request_for(hook))
    assert fake.count(SUBMIT) == 2


# --- what goes on the wire -----------------------------------------------------------------------
def test_submit_sends_every_field_exactly(fake):
    hook = make_hook(fake.url)
    request = hook.build_submit_request(
        "img-42-ultra-1",
        "https://cdn.example.com/catalog/photo 42.JPG?v=3",
        "photo 42.JPG",
        model="ai-image-1-ultra-01-09-2025",
        mask_type="heatmap",
        headers=[("Authorization", CDN_SECRET), ("X-Tenant", "acme")],
        sandbox=True,
        developer_payload='{"batch": 7}',
    )
    hook.submit_image(request)

    [received] = fake.received(SUBMIT)
    assert received.method == "PUT"
    assert received.path == "/v1/ai-image-detector-async/img-42-ultra-1/submit"
    assert received.headers["content-type"] == "application/json"
    assert received.headers["authorization"] == "Bearer " + fake.issued_tokens[0]
    assert received.body == {
        "url": "https://cdn.example.com/catalog/photo 42.JPG?v=3",
        "fileName": "photo 42.JPG",
        "model": "ai-image-1-ultra-01-09-2025",
        "maskType": "heatmap",
        "headers": [["Authorization", CDN_SECRET], ["X-Tenant", "acme"]],
        "webhooks": {"url": hook.webhook_url("img-42-ultra-1")},
        "sandbox": True,
        "developerPayload": '{"batch": 7}',
    }
    assert fake.received(LOGIN)[0].body == {"email": hook.settings.email, "key": API_KEY}


def test_submit_leaves_out_unset_optional_fields_and_binds_the_callback_to_the_submission(fake):
    hook = make_hook(fake.url)
    hook.submit_image(request_for(hook, 1))
    [received] = fake.received(SUBMIT)
    assert received.body == {
        "url": "https://cdn.example.com/images/1.png",
        "fileName": "1.png",
        "model": "ai-image-1-ultra",
        "webhooks": {"url": hook.webhook_url("scan-0001")},
        "sandbox": False,
        "developerPayload": hook.callback_payload("scan-0001"),
    }
    secret = hook.settings.webhook_secret.get_secret_value()
    assert verify_callback_payload([secret], "scan-0001", received.body["developerPayload"])
    assert not verify_callback_payload([secret], "scan-0002", received.body["developerPayload"])
    assert received.body["developerPayload"] not in received.body["webhooks"]["url"]  # not the URL's token


def test_scan_ids_are_escaped_in_the_path(fake):
    hook = make_hook(fake.url)
    hook.submit_image(hook.build_submit_request("a/b%c", "https://cdn.example.com/a.png", "a.png"))
    hook.check_image("a/b%c", PNG, "a.png")
    assert [r.path for r in fake.received(SUBMIT) + fake.received(CHECK)] == [
        "/v1/ai-image-detector-async/a%2Fb%25c/submit",
        "/v1/ai-image-detector/a%2Fb%25c/check",
    ]


def test_build_submit_request_uses_the_connection(fake):
    hook = make_hook(fake.url, sandbox=True)
    request = request_for(hook, 5)
    assert request.sandbox is True
    assert request_for(hook, 5, sandbox=False).sandbox is False
    base, _, token = request.webhook_url.rpartition("/")
    assert base == f"{WEBHOOK_BASE}/callbacks/scan-0005"
    assert verify_webhook_token([WEBHOOK_SECRET], "scan-0005", token)
    assert WEBHOOK_SECRET not in request.webhook_url


def test_webhook_url_needs_the_receiver_configured(fake):
    hook = make_hook(fake.url, webhook_base_url=None)
    with pytest.raises(CopyleaksValidationError, match="webhook_base_url"):
        request_for(hook)
    assert fake.count() == 0


def test_sync_check_uploads_multipart_and_parses_the_answer(fake):
    hook = make_hook(fake.url, sandbox=True)
    response = hook.check_image("check-1", PNG, "upload.webp")

    [received] = fake.received(CHECK)
    assert received.method == "POST"
    assert received.path == "/v1/ai-image-detector/check-1/check"
    assert received.headers["content-type"].startswith("multipart/form-data")
    assert received.body == {
        "filename": "upload.webp",
        "model": "ai-image-1-ultra",
        "sandbox": "true",
        "image": ("upload.webp", PNG),
    }
    assert isinstance(response, DetectionResponse)
    assert response.scanned_document.scan_id == "check-1"
    assert response.summary.ai == pytest.approx(7 / 12)
    assert response.image_info.metadata.issued_by == "Example Camera Co"
    np.testing.assert_array_equal(response.mask(), expected_mask())


async def test_async_check_matches_the_sync_one(fake):
    hook = make_hook(fake.url)
    async with hook.get_async_client() as client:
        response = await client.check_image("check-2", PNG, "a.png", sandbox=True)
    assert fake.received(CHECK)[0].body["sandbox"] == "true"
    np.testing.assert_array_equal(response.mask(), expected_mask())


@pytest.mark.parametrize(
    ("scan_id", "image", "file_name", "model"),
    [
        ("UPPER", PNG, "a.png", "ai-image-1-ultra"),
        ("check-1", PNG, "a.gif", "ai-image-1-ultra"),
        ("check-1", PNG, "a.png", "unknown-model"),
        ("check-1", b"", "a.png", "ai-image-1-ultra"),
        ("check-1", b"\x00" * (32 * 1024 * 1024), "a.png", "ai-image-1-ultra"),
    ],
)
def test_an_invalid_check_sends_nothing(fake, scan_id, image, file_name, model):
    hook = make_hook(fake.url)
    with pytest.raises(CopyleaksValidationError):
        hook.check_image(scan_id, image, file_name, model=model)
    assert fake.count() == 0  # not even a login


# --- sync and async: the same retry and error rules ---------------------------------------------
async def _submit_async(hook: CopyleaksHook, request: SubmitRequest) -> None:
    async with hook.get_async_client() as client:
        await client.submit_image(request)


def _submit(hook: CopyleaksHook, request: SubmitRequest, use_async: bool) -> None:
    """Submit through the sync client or the async one: both share the retry and error rules."""
    if use_async:
        asyncio.run(_submit_async(hook, request))
    else:
        hook.submit_image(request)


# --- secrets -------------------------------------------------------------------------------------
def test_secrets_never_reach_logs_or_errors(fake, caplog, capsys):
    caplog.set_level(logging.DEBUG)
    for name in ("httpx", "httpcore", "copyleaks_provider"):
        logging.getLogger(name).setLevel(logging.DEBUG)
    hook = make_hook(fake.url, max_retries=1)
    errors: list[CopyleaksError] = []

    request = hook.build_submit_request(
        "secret-scan", "https://cdn.example.com/a.png", "a.png", headers=[("Authorization", CDN_SECRET)]
    )
    fake.fail(SUBMIT, 429, **{"Retry-After": "0"})
    hook.submit_image(request)
    hook.check_image("secret-check", PNG, "a.png")
    for status in (400, 402, 503, 503):
        fake.fail(SUBMIT, status)
    for _ in range(3):
        try:
            hook.submit_image(request)
        except CopyleaksError as exc:
            errors.append(exc)
    fake.fail(LOGIN, 401)
    errors.append(CopyleaksHook(settings=make_settings(fake.url)).test_connection())
    try:
        make_hook(f"http://127.0.0.1:{free_port()}", max_retries=0).login()
    except CopyleaksNetworkError as exc:
        errors.append(exc)

    secrets = [API_KEY, WEBHOOK_SECRET, CDN_SECRET, *fake.issued_tokens]
    assert len(fake.issued_tokens) == 1
    captured = capsys.readouterr()
    texts = {
        "logs": caplog.text,
        "stdout": captured.out,
        "stderr": captured.err,
        "errors": " ".join(f"{e!s} {e!r}" for e in errors),
        "reprs": repr(hook.settings) + repr(request) + repr(hook.__dict__),
    }
    assert "Logged in to Copyleaks" in caplog.text  # the logs were captured
    for where, text in texts.items():
        for secret in secrets:
            assert secret not in text, f"a secret leaked into the {where}"


def test_the_token_and_key_are_registered_with_airflows_masker(fake):
    from airflow.sdk._shared.secrets_masker import redact

    hook = make_hook(fake.url)
    token = hook.login()
    assert redact(f"token={token}") == "token=***"
    assert redact(f"key={API_KEY}") == "key=***"
    assert redact(f"secret={WEBHOOK_SECRET}") == "secret=***"


def test_a_paced_request_is_sent_within_its_slot_even_when_its_client_is_slow_to_build(monkeypatch):
    """The first request of a process (``plan`` reading the balance) builds the httpx client; built
    after the slot, it was sent that much late, into the next process's second."""
    from copyleaks_provider.account.pacing import Pacer
    from copyleaks_provider.hooks import copyleaks as hook_module

    class _Budget:
        def reserve(self, kind, count, interval, earliest):
            return earliest

    taken: list[tuple[float, float]] = []
    pacer = Pacer(_Budget(), "api", per_second=10)
    take = pacer.take
    monkeypatch.setattr(pacer, "take", lambda: taken.append(take()) or taken[-1])
    sent: list[float] = []

    def answer(request: httpx.Request) -> httpx.Response:
        sent.append(time.time())
        return httpx.Response(200, json={"Amount": 7})

    real_client = httpx.Client

    def slow_client(**kwargs):
        time.sleep(0.2)  # the behaviour under test: a client this slow to build
        return real_client(transport=httpx.MockTransport(answer), **kwargs)

    monkeypatch.setattr(hook_module.httpx, "Client", slow_client)
    hook = CopyleaksHook(settings=CopyleaksSettings(email="a@example.com", api_key="k"))
    monkeypatch.setattr(hook, "_token", lambda stale=None, **_: "token")
    hook.__dict__["_sync_pacers"] = {"api": pacer}
    assert hook.get_credits() == 7
    [(slot, send_by)] = taken
    assert sent[0] - send_by < 0.1, f"sent {sent[0] - slot:.3f} s after its slot"
