"""The account's balance and usage history as the provider reads them: parsed, and through the hook's
sync and async clients against the emulator (a charged scan lowers the balance, a refund raises it)."""

from __future__ import annotations

import asyncio
from datetime import UTC, date, datetime

import httpx
import pytest

from copyleaks_provider.account.credits import (
    parse_credit_balance,
    usage_history_net,
    usage_history_path,
)
from copyleaks_provider.exceptions import CopyleaksError
from copyleaks_provider.hooks.copyleaks import CopyleaksHook


def test_the_balance_is_amount_and_nothing_else():
    assert parse_credit_balance({"Amount": 42}) == 42
    for odd in ({}, {"Amount": -1}, {"Amount": "many"}, [42], None):
        with pytest.raises(CopyleaksError, match="unknown shape"):
            parse_credit_balance(odd)


def test_the_usage_history_query_is_copyleaks_date_format():
    path = usage_history_path(date(2026, 1, 31), date(2026, 2, 1))
    assert path == "/v3/scans/usages/history?start=31-01-2026&end=01-02-2026"
    with pytest.raises(ValueError, match="before its start"):
        usage_history_path(date(2026, 2, 1), date(2026, 1, 31))


def test_the_usage_history_nets_used_and_refunded_credits_or_says_it_cannot():
    csv = "Date,Scans,CreditsUsed,CreditsRefunded\n01-12-2026,5,5,1\n02-12-2026,2,2,0\n"
    assert usage_history_net(csv) == 6
    assert usage_history_net("date,credits_used\n01-12-2026,3\n") == 3  # names read loosely
    assert usage_history_net("Date,Pages\n01-12-2026,3\n") is None  # columns not known
    assert usage_history_net("") is None


@pytest.fixture
def hook(emulator) -> CopyleaksHook:
    emulator.reset(credits=10)
    return CopyleaksHook(
        settings=emulator.connection_settings("http://127.0.0.1:9/hooks", "credits-test-webhook-secret")
    )


def _today() -> date:
    return datetime.now(UTC).date()


def test_the_balance_falls_with_a_charged_scan_and_rises_with_a_refund(hook, emulator):
    assert hook.get_credits() == 10
    good = hook.build_submit_request("credit-good", emulator.sample_url("img-00001.jpg"), "img-00001.jpg")
    bad = hook.build_submit_request("credit-tiny", emulator.sample_url("t.png", "tiny"), "t.png")
    hook.submit_image(good)
    hook.submit_image(bad)  # charged at submit, refunded when the scan fails
    emulator.wait_idle()
    assert hook.get_credits() == 9
    assert usage_history_net(hook.get_usage_history(_today(), _today())) == 1
    rows = hook.get_usage_history(_today(), _today()).splitlines()
    assert rows[1].endswith(",2,2,1"), rows  # two scans charged, one refunded


def test_the_async_client_reads_the_same_balance(hook):
    async def read() -> tuple[int, str]:
        async with hook.get_async_client() as client:
            return await client.get_credits(), await client.get_usage_history(_today(), _today())

    balance, history = asyncio.run(read())
    assert balance == 10 and history.startswith("Date,")


def test_a_revoked_token_is_renewed_once_for_the_balance(hook, emulator):
    assert hook.get_credits() == 10
    httpx.post(f"{emulator.url}/admin/revoke-tokens").raise_for_status()
    logins = emulator.state()["logins"]
    assert hook.get_credits() == 10
    assert emulator.state()["logins"] == logins + 1
