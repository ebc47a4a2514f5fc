"""The emulator enforces Copyleaks' documented per-account limits by default (10 API requests/s, 12
logins per 15 minutes then a 5-minute block, 900 sync checks per 15 minutes), each a setting."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

import copyleaks_emulator.limits as limits_module
from copyleaks_emulator import EmulatorSettings
from tests.support.clock import FakeClock
from tests.support.emulator import LOGIN, SUBMIT, auth, check_json, put, submit_body


@pytest.fixture
def clock(monkeypatch) -> FakeClock:
    """The limits' clock, standing still until the test moves it: a window's second is the test's to end,
    not the machine's (a burst is one instant however slowly a loaded machine sends it)."""
    return FakeClock().install(monkeypatch, limits_module)


def test_the_defaults_are_copyleaks_documented_limits():
    settings = EmulatorSettings()
    assert settings.api_requests_per_second == 10
    assert (settings.logins_per_window, settings.login_window_seconds) == (12, 900)
    assert settings.login_block_seconds == 300
    assert (settings.checks_per_window, settings.check_window_seconds) == (900, 900)


def test_an_eleventh_api_request_within_a_second_is_refused_with_retry_after(emulator, recorder, clock):
    headers = auth(emulator)
    body = submit_body(emulator, recorder, sandbox=True)
    # 14 at once, all within the same instant of the limits' clock
    with httpx.Client(headers=headers) as client, ThreadPoolExecutor(max_workers=14) as pool:
        statuses = list(pool.map(lambda i: burst_put(client, emulator, f"burst-{i:02d}", body), range(14)))
    codes = sorted(r.status_code for r in statuses)
    assert codes == [201] * 10 + [429] * 4
    assert all(r.headers["Retry-After"] == "1" for r in statuses if r.status_code == 429)
    state = emulator.state()
    assert state["api_429"] == 4 and state["peak_requests_per_second"] == 14
    assert state["api_requests"] == 14 and state["scans"] == 10  # a refused request registers nothing

    clock.advance(0.99)  # still within the second: still refused
    assert put(emulator, "burst-early", body, headers=headers).status_code == 429
    clock.advance(0.02)  # the second is over: the budget is back
    assert put(emulator, "burst-later", body, headers=headers).status_code == 201


def burst_put(client: httpx.Client, emulator, scan_id: str, body: dict) -> httpx.Response:
    return client.put(f"{emulator.url}{SUBMIT.format(scan_id)}", json=body)


def test_requests_paced_at_the_limit_are_all_accepted(emulator, recorder, clock):
    headers = auth(emulator)
    body = submit_body(emulator, recorder, sandbox=True)
    codes = []
    for i in range(15):
        codes.append(put(emulator, f"paced-{i:02d}", body, headers=headers).status_code)
        clock.advance(0.105)  # 9.5 requests per second: just under the limit
    assert codes == [201] * 15
    state = emulator.state()
    assert state["api_429"] == 0 and state["peak_requests_per_second"] <= 10


def test_the_thirteenth_login_blocks_the_account_for_five_minutes(emulator):
    logins = [
        httpx.post(f"{emulator.url}{LOGIN}", json={"email": emulator.email, "key": emulator.api_key})
        for _ in range(14)
    ]
    assert [r.status_code for r in logins] == [200] * 12 + [429, 429]
    assert logins[12].headers["Retry-After"] == "300"
    assert 298 <= int(logins[13].headers["Retry-After"]) <= 300
    assert "blocked" in logins[13].json()["message"]
    state = emulator.state()
    assert state["logins"] == 12 and state["login_429"] == 2


def test_a_login_block_is_a_setting(start_emulator, clock):
    emulator = start_emulator(logins_per_window=2, login_window_seconds=60, login_block_seconds=1)
    send = lambda: httpx.post(  # noqa: E731
        f"{emulator.url}{LOGIN}", json={"email": emulator.email, "key": emulator.api_key}
    )
    assert [send().status_code for _ in range(3)] == [200, 200, 429]
    clock.advance(1.1)  # the block is over, but the window still holds two logins: blocked again
    assert send().status_code == 429
    clock.advance(60)  # the window has let both logins go: the account may log in again
    assert send().status_code == 200
    assert emulator.state()["login_429"] == 2


def test_sync_checks_have_their_own_budget(start_emulator, recorder):
    emulator = start_emulator(checks_per_window=2, check_window_seconds=60)
    headers = auth(emulator)
    codes = [
        check_json(emulator, f"check-{i}", b"not an image", headers=headers).status_code for i in range(3)
    ]
    assert codes == [400, 400, 429]  # the first two are counted (and refused as images), the third not
    assert (
        put(emulator, "submit-1", submit_body(emulator, recorder, sandbox=True), headers=headers).status_code
        == 201
    )
    state = emulator.state()
    assert state["check_429"] == 1 and state["api_429"] == 0


def test_limits_are_per_account(start_emulator, recorder):
    emulator = start_emulator(accounts={"a@example.com": "key-a", "b@example.com": "key-b"})
    tokens = {}
    for email, key in (("a@example.com", "key-a"), ("b@example.com", "key-b")):
        answer = httpx.post(f"{emulator.url}{LOGIN}", json={"email": email, "key": key}).json()
        tokens[email] = {"Authorization": f"Bearer {answer['access_token']}"}
    body = submit_body(emulator, recorder, sandbox=True)
    codes = [put(emulator, f"a-{i}", body, headers=tokens["a@example.com"]).status_code for i in range(10)]
    codes += [put(emulator, f"b-{i}", body, headers=tokens["b@example.com"]).status_code for i in range(10)]
    assert codes == [201] * 20
    assert emulator.state()["peak_requests_per_second"] <= 10  # the peak is per account


def test_zero_lifts_a_limit(start_emulator, recorder):
    emulator = start_emulator(api_requests_per_second=0)
    headers = auth(emulator)
    body = submit_body(emulator, recorder, sandbox=True)
    assert [put(emulator, f"free-{i}", body, headers=headers).status_code for i in range(25)] == [201] * 25


def test_revoking_tokens_makes_every_call_401_until_a_new_login(emulator, recorder):
    headers = auth(emulator)
    body = submit_body(emulator, recorder, sandbox=True)
    assert put(emulator, "before", body, headers=headers).status_code == 201
    assert httpx.post(f"{emulator.url}/admin/revoke-tokens").json()["revoked"] >= 1
    assert put(emulator, "after", body, headers=headers).status_code == 401
    assert put(emulator, "after", body, headers=auth(emulator)).status_code == 201
    assert emulator.state()["tokens_revoked"] >= 1
