"""Fault injection: the seeded dice that decide API errors and how each webhook is (mis)delivered.

The knobs are read at every roll, so ``PATCH /admin/faults`` takes effect at once.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter

from copyleaks_emulator.settings import EmulatorSettings
from copyleaks_emulator.validation import ApiError

#: Extra random wait of a reordered delivery, on top of the webhook latency.
REORDER_WINDOW_MS = 100


class FaultInjector:
    def __init__(self, settings: EmulatorSettings, counters: Counter[str]):
        self.settings = settings
        self.counters = counters
        self.rng = random.Random(settings.seed)

    def reseed(self) -> None:
        self.rng = random.Random(self.settings.seed)

    def roll(self, probability: float) -> bool:
        return probability > 0 and self.rng.random() < probability

    async def api_latency(self) -> None:
        if self.settings.api_latency_ms:
            await asyncio.sleep(self.settings.api_latency_ms / 1000)

    def api_errors(self) -> None:
        """Maybe a 429 (with Retry-After) or a 503, as configured."""
        settings = self.settings
        if self.roll(settings.p_429):
            self.counters["injected_429"] += 1
            retry_after = f"{settings.retry_after_seconds:g}"
            raise ApiError(429, "too many requests; retry later", {"Retry-After": retry_after})
        if self.roll(settings.p_5xx):
            self.counters["injected_5xx"] += 1
            raise ApiError(503, "service unavailable (maintenance); retry later")

    def delivery_delays(self) -> list[float]:
        """Seconds each copy of a webhook waits before its first try: [] = dropped, 2 items = duplicated."""
        settings = self.settings
        if self.roll(settings.p_drop_webhook):
            self.counters["webhooks_dropped"] += 1
            return []
        copies = 1
        if self.roll(settings.p_duplicate_webhook):
            self.counters["webhooks_duplicated"] += 1
            copies = 2
        delays = []
        for _ in range(copies):
            delay = settings.webhook_latency_ms
            if settings.reorder:
                delay += self.rng.uniform(0, settings.webhook_latency_ms + REORDER_WINDOW_MS)
            if self.roll(settings.p_delay_webhook):
                self.counters["webhooks_delayed"] += 1
                delay += settings.delay_webhook_ms
            delays.append(delay / 1000)
        return delays

    def retry_wait(self, attempt: int) -> float:
        """The backoff after failed try ``attempt`` (1-based): base * 2**(attempt - 1)."""
        return self.settings.webhook_retry_base_seconds * 2 ** (attempt - 1)
