"""Webhook delivery as the spec describes it: POST the body, 2xx ends it, anything else is retried.

Up to ``webhook_max_tries`` tries with exponential backoff (about a minute by default), then the
webhook is given up (``webhooks_failed``). Waits cost nothing (sleeping tasks); at most ``workers``
POSTs are on the wire at once.
"""

from __future__ import annotations

import asyncio
from collections import Counter

import httpx

from copyleaks_emulator.faults import FaultInjector
from copyleaks_emulator.settings import EmulatorSettings

#: Copyleaks waits this long for a receiver's answer.
WEBHOOK_TIMEOUT_SECONDS = 70.0


class WebhookSender:
    def __init__(self, settings: EmulatorSettings, faults: FaultInjector, client: httpx.AsyncClient):
        self.settings = settings
        self.faults = faults
        self.client = client
        self.on_the_wire = asyncio.Semaphore(settings.workers)

    @property
    def counters(self) -> Counter[str]:
        return self.faults.counters

    async def deliver(self, url: str, body: dict, delay: float) -> bool:
        """Wait ``delay`` s, then POST until a 2xx or the tries run out; True when acknowledged."""
        if delay:
            await asyncio.sleep(delay)
        tries = self.settings.webhook_max_tries
        for attempt in range(1, tries + 1):
            if await self._post(url, body):
                self.counters["webhooks_acknowledged"] += 1
                return True
            if attempt < tries:
                await asyncio.sleep(self.faults.retry_wait(attempt))
        self.counters["webhooks_failed"] += 1
        return False

    async def _post(self, url: str, body: dict) -> bool:
        """One try; a try without an answer (the connection broke, the time ran out) is counted as
        ``webhooks_unanswered``: the receiver may or may not have stored the body."""
        async with self.on_the_wire:
            self.counters["webhooks_sent"] += 1
            try:
                response = await self.client.post(url, json=body, timeout=WEBHOOK_TIMEOUT_SECONDS)
            except httpx.HTTPError:
                self.counters["webhooks_unanswered"] += 1
                return False
            return response.is_success
