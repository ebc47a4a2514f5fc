"""What a run may spend of the Copyleaks account's real balance: read when the run is planned."""

from __future__ import annotations

from dataclasses import dataclass

from copyleaks_provider.exceptions import CopyleaksCreditsError, account_error_text

#: What to do about an account without credits, as a 402 from Copyleaks says it.
_TOP_UP = account_error_text(CopyleaksCreditsError(402, ""))[1]


class NotEnoughCredits(Exception):
    """The account's balance, less the reserve, leaves nothing to spend: a top-up is needed, not a retry."""


@dataclass(frozen=True)
class RunCredits:
    """The account's balance when the run was planned, and what the run may spend of it."""

    balance: int
    reserve: int

    @property
    def available(self) -> int:
        return max(self.balance - self.reserve, 0)


def credits_for_run(balance: int, reserve: int) -> RunCredits:
    """The run's share of ``balance`` after keeping ``reserve``; ``NotEnoughCredits`` when none is left,
    saying what to change."""
    credits = RunCredits(balance, reserve)
    if credits.available <= 0:
        kept = f" and {reserve} are kept in reserve (the credit_reserve Param)" if reserve else ""
        raise NotEnoughCredits(
            f"The Copyleaks account has {balance} credits{kept}: nothing was planned or submitted. {_TOP_UP}"
        )
    return credits
