"""What a run may spend of the account's balance: the balance less the reserve, and a run with nothing to
spend refused before anything is planned, saying what to do."""

from __future__ import annotations

import pytest

from image_audit.planning.credits import NotEnoughCredits, credits_for_run


@pytest.mark.parametrize(("balance", "reserve", "available"), [(100, 0, 100), (100, 30, 70), (1, 0, 1)])
def test_a_run_may_spend_the_balance_less_the_reserve(balance, reserve, available):
    credits = credits_for_run(balance, reserve)
    assert (credits.balance, credits.reserve, credits.available) == (balance, reserve, available)


@pytest.mark.parametrize(("balance", "reserve"), [(0, 0), (5, 5), (5, 50)])
def test_nothing_to_spend_is_refused_saying_to_top_up_or_use_the_sandbox(balance, reserve):
    with pytest.raises(NotEnoughCredits) as refused:
        credits_for_run(balance, reserve)
    message = str(refused.value)
    assert message.startswith(f"The Copyleaks account has {balance} credits")
    assert ("credit_reserve" in message) == bool(reserve)
    assert "nothing was planned or submitted" in message
    assert "Top up credits, or run with sandbox=True" in message
