"""The account's credit balance and usage history: what Copyleaks' admin endpoints answer, parsed.

``GET /v3/scans/credits`` answers ``{"Amount": <credits left>}``; ``GET /v3/scans/usages/history?start=
dd-MM-yyyy&end=dd-MM-yyyy`` answers a CSV of the account's usage per day. Both count against the
account's request budget like any other call.
"""

from __future__ import annotations

import csv
import io
from datetime import date
from urllib.parse import urlencode

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from copyleaks_provider.exceptions import CopyleaksError

CREDITS_PATH = "/v3/scans/credits"
USAGE_HISTORY_PATH = "/v3/scans/usages/history"
#: Copyleaks' date format in the usage history's query.
USAGE_DATE_FORMAT = "%d-%m-%Y"


class CreditBalance(BaseModel):
    """``{"Amount": n}``: the credits the account has left."""

    model_config = ConfigDict(extra="allow", frozen=True)

    amount: int = Field(alias="Amount", ge=0)


def parse_credit_balance(payload: object) -> int:
    """The credits left, from the credits endpoint's JSON; ``CopyleaksError`` for any other shape."""
    try:
        return CreditBalance.model_validate(payload).amount
    except ValidationError:
        raise CopyleaksError("Copyleaks answered the credit balance in an unknown shape") from None


def usage_history_path(start: date, end: date) -> str:
    """The usage history's path and query for the days ``start`` to ``end``, both included."""
    if end < start:
        raise ValueError(f"the usage history's end ({end}) is before its start ({start})")
    query = urlencode({"start": start.strftime(USAGE_DATE_FORMAT), "end": end.strftime(USAGE_DATE_FORMAT)})
    return f"{USAGE_HISTORY_PATH}?{query}"


def parse_usage_history(text: str) -> list[dict[str, str]]:
    """The usage history's rows, as the CSV names its columns (Copyleaks does not document them)."""
    return [dict(row) for row in csv.DictReader(io.StringIO(text))]


def usage_history_net(text: str) -> int | None:
    """Credits used less credits refunded over the usage history's rows; ``None`` when its columns are
    not recognisable (Copyleaks does not document them: read are the columns whose names, ignoring case
    and separators, are ``creditsused`` and ``creditsrefunded``)."""
    rows = parse_usage_history(text)
    if not rows:
        return None
    columns = {"".join(ch for ch in name.lower() if ch.isalnum()): name for name in rows[0] if name}
    used, refunded = columns.get("creditsused"), columns.get("creditsrefunded")
    if used is None:
        return None
    try:
        return sum(int(row[used] or 0) - (int(row[refunded] or 0) if refunded else 0) for row in rows)
    except ValueError:
        return None
