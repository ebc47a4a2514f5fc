"""What the emulator remembers, all in memory: tokens, scans, credits and the counters tests read.

Only touched from the event loop (no locks needed).
"""

from __future__ import annotations

import secrets
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from enum import Enum
from typing import Any

from copyleaks_emulator.settings import EmulatorSettings

#: Counters reported by ``GET /admin/state`` (always present, zero until something happens).
COUNTERS = (
    "logins",
    "logins_refused",
    "unauthorized",
    "duplicate_submissions",
    "scan_ids_accepted_twice",
    "images_accepted_twice",
    "conflicts",
    "no_credits",
    "bad_requests",
    "checks",
    "scans_completed",
    "scans_failed",
    "webhooks_sent",
    "webhooks_acknowledged",
    "webhooks_unanswered",
    "webhooks_failed",
    "webhooks_dropped",
    "webhooks_duplicated",
    "webhooks_delayed",
    "injected_429",
    "injected_5xx",
    "api_requests",
    "api_429",
    "login_429",
    "check_429",
    "peak_requests_per_second",
    "tokens_revoked",
)


@dataclass(frozen=True)
class ScanKey:
    """What identifies the image of a scan: the same scan id with another key is a 409."""

    url: str
    file_name: str
    model: str


class Admission(Enum):
    NEW = "new"
    REPEAT = "repeat"  # the same request again: 201, nothing new
    CONFLICT = "conflict"  # the scan id is taken by another image: 409


class EmulatorState:
    """Accounts' tokens, registered scans, the credit balance and the counters."""

    def __init__(self, settings: EmulatorSettings):
        self.settings = settings
        #: access token -> (email, expiry). Kept across resets, so a client's cached token stays valid.
        self.tokens: dict[str, tuple[str, datetime]] = {}
        self.scans: dict[str, ScanKey] = {}
        self._accepted_keys: set[ScanKey] = set()  # the images of ``scans``
        self.submissions: Counter[str] = Counter()
        self.counters: Counter[str] = Counter()  # shared with the fault injector: cleared, never replaced
        self.credits = settings.credits
        #: (day, what) -> count: the usage history's rows (``scans``, ``credits_used``, ``credits_refunded``).
        self.usage: Counter[tuple[date, str]] = Counter()
        self.in_flight = 0
        self.scanning = 0  # jobs a worker is scanning now (at most the pool's size)

    def reset(self) -> None:
        """Forget scans and counters and refill the credits (the worker pool must be idle)."""
        self.scans.clear()
        self._accepted_keys.clear()
        self.submissions.clear()
        self.counters.clear()
        self.credits = self.settings.credits
        self.usage.clear()
        self.in_flight = 0
        self.scanning = 0

    # --- identity ---------------------------------------------------------------------------------
    def login(self, email: str, key: str) -> dict[str, str] | None:
        """A new access token for a known account, or None for a wrong email or key."""
        known = self.settings.accounts.get(email)
        if known is None or not secrets.compare_digest(known, key):
            self.counters["logins_refused"] += 1
            return None
        token = secrets.token_urlsafe(32)
        issued = datetime.now(UTC)
        expires = issued + timedelta(seconds=self.settings.token_ttl_seconds)
        self.tokens[token] = (email, expires)
        self.counters["logins"] += 1
        return {"access_token": token, ".issued": _iso(issued), ".expires": _iso(expires)}

    def account_of(self, authorization: str) -> str | None:
        """The email behind an ``Authorization: Bearer ...`` header, if the token is valid and unexpired."""
        scheme, _, token = authorization.partition(" ")
        entry = self.tokens.get(token.strip()) if scheme.lower() == "bearer" else None
        if entry is None or entry[1] <= datetime.now(UTC):
            self.counters["unauthorized"] += 1
            return None
        return entry[0]

    def revoke_tokens(self) -> int:
        """Invalidate every access token (as an expiry or a revocation would); returns how many."""
        revoked = len(self.tokens)
        self.tokens.clear()
        self.counters["tokens_revoked"] += revoked
        return revoked

    # --- scans and credits ------------------------------------------------------------------------
    def admit(self, scan_id: str, key: ScanKey) -> Admission:
        """Register a submitted scan id; a repeat of the same request is counted, not registered."""
        known = self.scans.get(scan_id)
        if known is not None and known != key:
            self.counters["conflicts"] += 1
            return Admission.CONFLICT
        if known is not None:
            self.submissions[scan_id] += 1
            self.counters["duplicate_submissions"] += 1
            return Admission.REPEAT
        return Admission.NEW

    def accept(self, scan_id: str, key: ScanKey) -> None:
        """Register (and queue, charge) a new scan. Counted apart, as double submissions: the same scan
        id accepted again (``scan_ids_accepted_twice``; a repeat answered idempotently is not one), and
        an image accepted under a second scan id (``images_accepted_twice``: charged twice; a new
        attempt after a timeout is one too, so only a suite without timeouts expects it at 0)."""
        if scan_id in self.scans:
            self.counters["scan_ids_accepted_twice"] += 1
        if key in self._accepted_keys:
            self.counters["images_accepted_twice"] += 1
        self._accepted_keys.add(key)
        self.scans[scan_id] = key
        self.submissions[scan_id] += 1

    def has_credit(self) -> bool:
        if self.credits < 1:
            self.counters["no_credits"] += 1
            return False
        return True

    def charge(self) -> None:
        self.credits -= 1
        today = datetime.now(UTC).date()
        self.usage[today, "scans"] += 1
        self.usage[today, "credits_used"] += 1

    def refund(self) -> None:
        """Give back the credit of a charged scan that failed (Copyleaks charges completed scans only)."""
        self.credits += 1
        self.usage[datetime.now(UTC).date(), "credits_refunded"] += 1

    def usage_history(self, start: date, end: date) -> str:
        """The usage per day from ``start`` to ``end`` (both included) as CSV: ``Date`` (dd-MM-yyyy),
        ``Scans``, ``CreditsUsed``, ``CreditsRefunded``. Copyleaks does not document its columns: these
        are the emulator's."""
        lines = ["Date,Scans,CreditsUsed,CreditsRefunded"]
        day = start
        while day <= end:
            counts = [self.usage[day, what] for what in ("scans", "credits_used", "credits_refunded")]
            lines.append(",".join([day.strftime("%d-%m-%Y"), *map(str, counts)]))
            day += timedelta(days=1)
        return "\n".join(lines) + "\n"

    def snapshot(self, queue_depth: int) -> dict[str, Any]:
        return {
            "submissions": dict(self.submissions),
            "scans": len(self.scans),
            "credits_remaining": self.credits,
            "queue_depth": queue_depth,
            "in_flight": self.in_flight,
            "scanning": self.scanning,
            **{name: self.counters[name] for name in COUNTERS},
            "faults": self.settings.faults(),
        }


def _iso(moment: datetime) -> str:
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")
