"""The emulator's account endpoints, in Copyleaks' shapes: the credit balance and the usage history."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import httpx
import pytest


@pytest.fixture
def bearer(emulator) -> dict[str, str]:
    emulator.reset(credits=3)
    login = httpx.post(
        f"{emulator.url}/v3/account/login/api", json={"email": emulator.email, "key": emulator.api_key}
    )
    return {"Authorization": "Bearer " + login.raise_for_status().json()["access_token"]}


def _day(offset: int = 0) -> str:
    return (datetime.now(UTC).date() + timedelta(days=offset)).strftime("%d-%m-%Y")


def test_the_balance_needs_a_token_and_answers_amount(emulator, bearer):
    assert httpx.get(f"{emulator.url}/v3/scans/credits").status_code == 401
    assert httpx.get(f"{emulator.url}/v3/scans/credits", headers=bearer).json() == {"Amount": 3}


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("", "start is required"),
        ("?start=01-12-2026", "end is required"),
        ("?start=2026-12-01&end=02-12-2026", "start must be a date as dd-MM-yyyy"),
        ("?start=01-12-2026&end=31-02-2026", "end must be a date as dd-MM-yyyy"),
        ("?start=02-12-2026&end=01-12-2026", "end must not be before start"),
        ("?start=01-01-2024&end=01-01-2026", "at most 366 days"),
    ],
)
def test_a_missing_or_malformed_date_is_a_400(emulator, bearer, query, message):
    answer = httpx.get(f"{emulator.url}/v3/scans/usages/history{query}", headers=bearer)
    assert answer.status_code == 400 and message in answer.json()["message"]


def test_the_usage_history_has_a_row_per_day_of_charged_and_refunded_credits(emulator, bearer):
    hook = {"url": emulator.sample_url("img-00002.jpg"), "fileName": "a.jpg", "model": "ai-image-1-ultra"}
    body = {**hook, "webhooks": {"url": "http://127.0.0.1:9/hook"}}
    for scan_id, url in [("usage-1", hook["url"]), ("usage-2", emulator.sample_url("t.png", "tiny"))]:
        put = httpx.put(
            f"{emulator.url}/v1/ai-image-detector-async/{scan_id}/submit",
            json={**body, "url": url},
            headers=bearer,
        )
        assert put.status_code == 201
    emulator.wait_idle()
    answer = httpx.get(
        f"{emulator.url}/v3/scans/usages/history?start={_day(-1)}&end={_day(1)}", headers=bearer
    )
    assert answer.headers["content-type"].startswith("text/csv")
    assert answer.text.splitlines() == [
        "Date,Scans,CreditsUsed,CreditsRefunded",
        f"{_day(-1)},0,0,0",
        f"{_day()},2,2,1",  # the tiny image's scan failed: refunded
        f"{_day(1)},0,0,0",
    ]
    balance = httpx.get(f"{emulator.url}/v3/scans/credits", headers=bearer).json()
    assert balance == {"Amount": 2}
