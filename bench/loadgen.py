"""A plain load generator playing Copyleaks' webhook sender: POST each callback once, as fast as the
server answers with ``--concurrency`` connections; print throughput and latency as JSON.

Runs in its own process (``python -m bench.loadgen``) so it never shares an event loop with the server
it measures. aiohttp, not httpx: the generator must be cheaper per request than what it measures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections import Counter

import aiohttp

from bench.callbacks import callback_bodies, scan_ids
from bench.common import percentile
from copyleaks_provider.webhooks.auth import webhook_url


async def deliver(urls: list[str], bodies: list[bytes], concurrency: int, warmup: int = 0) -> dict:
    """POST every body; the first ``warmup`` ones (a cold server's pool filling) are not measured."""
    statuses: Counter[str] = Counter()
    latencies: list[float] = []
    queue = iter(range(warmup, len(urls)))
    connector = aiohttp.TCPConnector(limit=concurrency, limit_per_host=concurrency)
    headers = {"content-type": "application/json"}

    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker() -> None:
            for i in queue:
                sent = time.perf_counter()
                try:
                    async with session.post(urls[i], data=bodies[i], headers=headers) as response:
                        await response.read()
                        statuses[str(response.status)] += 1
                except aiohttp.ClientError as exc:
                    statuses[type(exc).__name__] += 1
                latencies.append(time.perf_counter() - sent)

        for start in range(0, warmup, concurrency):
            batch = range(start, min(warmup, start + concurrency))
            await asyncio.gather(*(_post(session, urls[i], bodies[i], headers) for i in batch))
        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    return {
        "sent": len(urls) - warmup,
        "statuses": dict(statuses),
        "ok": statuses["200"],
        "elapsed_s": round(elapsed, 3),
        "per_second": round(statuses["200"] / elapsed, 1),
        "p50_ms": round(percentile(latencies, 0.50) * 1000, 2),
        "p99_ms": round(percentile(latencies, 0.99) * 1000, 2),
    }


async def _post(session: aiohttp.ClientSession, url: str, body: bytes, headers: dict) -> None:
    async with session.post(url, data=body, headers=headers) as response:
        await response.read()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", required=True, help="the receiver's base URL")
    parser.add_argument("--secret", required=True, help="the webhook secret the URLs are signed with")
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--prefix", default="bench")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--warmup", type=int, default=0, help="callbacks sent first, not measured")
    args = parser.parse_args()
    ids = scan_ids(args.warmup, "warm-up") + scan_ids(args.count, args.prefix)
    bodies = callback_bodies(ids)
    urls = [webhook_url(args.base, args.secret, scan_id) for scan_id in ids]
    print(json.dumps(asyncio.run(deliver(urls, bodies, args.concurrency, args.warmup))))


if __name__ == "__main__":
    main()
