"""Submit throughput: the operator's async client (``CopyleaksAsyncClient.submit_many``) against the
emulator's raw capacity, measured by a plain aiohttp load generator on the same endpoint, with the same
bodies and concurrency, each in its own process, against the same emulator process.

The images point at a URL that answers 404 at once, so the emulator's background work per scan (fetch,
then the error webhook to a bare endpoint) is small and equal for both; the submit path is measured.

``python -m bench.submit`` runs the comparison; ``--client ours|raw`` is one side (used internally).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

import aiohttp

from bench.common import EMULATOR_ARGS, report, run_json, server_process
from copyleaks_provider.hooks.async_client import CopyleaksAsyncClient
from copyleaks_provider.hooks.copyleaks import CopyleaksHook
from copyleaks_provider.settings import CopyleaksSettings

EMAIL, API_KEY = "bench@image-audit.dev", "bench-api-key"
TARGET_RATIO = 0.8


def requests_for(hook: CopyleaksHook, prefix: str, count: int, image_base: str) -> list:
    return [
        hook.build_submit_request(f"{prefix}-{i:07d}", f"{image_base}/images/{i}.jpg", f"{i}.jpg")
        for i in range(count)
    ]


async def ours(hook: CopyleaksHook, requests: list) -> int:
    accepted = 0
    async with CopyleaksAsyncClient(hook) as client:
        await client.login()
        async for outcome in client.submit_many(requests):
            accepted += outcome.error is None
    return accepted


async def raw(hook: CopyleaksHook, requests: list) -> int:
    settings = hook.settings
    connector = aiohttp.TCPConnector(limit=settings.max_concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        login = {"email": settings.email, "key": settings.api_key.get_secret_value()}
        async with session.post(f"{settings.identity_url}/v3/account/login/api", json=login) as response:
            headers = {"Authorization": f"Bearer {(await response.json())['access_token']}"}
        pending = iter(requests)
        accepted = 0

        async def worker() -> None:
            nonlocal accepted
            for request in pending:
                url = f"{settings.api_url}/v1/ai-image-detector-async/{request.scan_id}/submit"
                async with session.put(url, json=request.to_wire(), headers=headers) as response:
                    await response.read()
                    accepted += response.status == 201

        await asyncio.gather(*(worker() for _ in range(settings.max_concurrency)))
    return accepted


def one_side(args: argparse.Namespace) -> None:
    settings = CopyleaksSettings(
        email=EMAIL,
        api_key=API_KEY,
        identity_url=args.api,
        api_url=args.api,
        webhook_base_url=args.sink,
        webhook_secret="bench",
        max_concurrency=args.concurrency,
        requests_per_second=0,  # the account budget lifted, as on the emulator: this measures overhead
    )
    hook = CopyleaksHook(settings=settings)
    requests = requests_for(hook, f"{args.client}{args.prefix_round}", args.count, args.sink)
    started = time.perf_counter()
    accepted = asyncio.run((ours if args.client == "ours" else raw)(hook, requests))
    elapsed = time.perf_counter() - started
    print(
        json.dumps(
            {"accepted": accepted, "seconds": round(elapsed, 2), "per_second": round(accepted / elapsed)}
        )
    )


def main(count: int = 10_000, concurrency: int = 16, rounds: int = 2) -> dict:
    emulator_args = [*EMULATOR_ARGS, "--account", f"{EMAIL}:{API_KEY}"]
    runs: dict[str, list[dict]] = {"ours": [], "raw": []}
    with server_process(["bench.bare_endpoint"]) as sink, server_process(emulator_args) as api:
        for round_ in range(rounds):  # alternate, so drift on a shared machine hits both sides
            for side in ("raw", "ours"):
                args = ["--client", side, "--api", api, "--sink", sink, "--count", str(count)]
                args += ["--concurrency", str(concurrency), "--prefix-round", str(round_)]
                runs[side].append(run_json(["bench.submit", *args]))
    best = {side: max(r["per_second"] for r in results) for side, results in runs.items()}
    ratio = round(best["ours"] / best["raw"], 2)
    figures = {
        "submissions per run": count,
        "concurrency": concurrency,
        "raw load generator": f"{best['raw']}/s (best of {rounds})",
        "operator's async client": f"{best['ours']}/s (best of {rounds})",
        "client / raw": ratio,
        "all accepted": all(r["accepted"] == count for results in runs.values() for r in results),
    }
    return report("submit", figures, [(f"client/raw >= {TARGET_RATIO}", ratio >= TARGET_RATIO)])


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--client", choices=["ours", "raw"])
    parser.add_argument("--api")
    parser.add_argument("--sink")
    parser.add_argument("--count", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--prefix-round", default="0", help="makes scan ids unique per run (no 409s)")
    cli = parser.parse_args()
    if cli.client:
        one_side(cli)
    else:
        main(cli.count, cli.concurrency)
