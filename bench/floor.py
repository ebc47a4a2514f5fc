"""The floor of the end-to-end benchmark: a bare asyncio script that makes the same N submissions to the
same emulator and waits for the same N webhooks, with nothing else (no Airflow, no warehouse).

``python -m bench.floor --api URL --email E --key K --samples URL --count N`` prints JSON. Its webhook
endpoint is an aiohttp server in the same event loop that only counts arrivals.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from datetime import UTC, datetime

import aiohttp
from aiohttp import web

from image_audit_dev.sample_catalog import sample_catalog_rows
from image_audit_dev.servers import free_port


async def run(api: str, email: str, key: str, samples: str, count: int, concurrency: int) -> dict:
    rows = sample_catalog_rows(samples, count, start=datetime(2026, 1, 1, tzinfo=UTC), bad_rows=False)
    arrived: set[str] = set()
    all_arrived = asyncio.Event()

    async def webhook(request: web.Request) -> web.Response:
        await request.read()
        arrived.add(request.match_info["scan_id"])
        if len(arrived) >= count:
            all_arrived.set()
        return web.json_response({"status": "ok"})

    server = web.Application()
    server.router.add_post("/callbacks/{scan_id}", webhook)
    runner = web.AppRunner(server, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()

    started = time.perf_counter()
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        async with session.post(f"{api}/v3/account/login/api", json={"email": email, "key": key}) as login:
            token = (await login.json())["access_token"]
        headers = {"Authorization": f"Bearer {token}"}
        pending = iter(enumerate(rows))

        async def submitter() -> None:
            for i, row in pending:
                scan_id = f"floor-{i:07d}"
                body = {
                    "url": row["url"],
                    "fileName": row["file_name"],
                    "model": "ai-image-1-ultra",
                    "webhooks": {"url": f"http://127.0.0.1:{port}/callbacks/{scan_id}"},
                    "sandbox": False,
                }
                async with session.put(
                    f"{api}/v1/ai-image-detector-async/{scan_id}/submit", json=body, headers=headers
                ) as response:
                    await response.read()
                    if response.status != 201:
                        raise RuntimeError(f"submit {scan_id}: HTTP {response.status}")

        await asyncio.gather(*(submitter() for _ in range(concurrency)))
        submitted = time.perf_counter()
        await all_arrived.wait()
    elapsed = time.perf_counter() - started
    await runner.cleanup()
    return {"count": count, "submit_s": round(submitted - started, 2), "elapsed_s": round(elapsed, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--api", required=True)
    parser.add_argument("--email", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--samples", required=True, help="base URL of the sample images")
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    figures = asyncio.run(run(args.api, args.email, args.key, args.samples, args.count, args.concurrency))
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
