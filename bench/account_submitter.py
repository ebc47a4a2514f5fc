"""``python -m bench.account_submitter PREFIX COUNT IMAGE_BASE``: one process submitting like a submit task.

Every Airflow task runs in a process of its own; the account tests start several of these at once to
prove that the token and the request budget hold for the account, not the process. It submits
``COUNT`` sandbox images through the Copyleaks hook's async client (the connection comes from
``AIRFLOW_CONN_COPYLEAKS_DEFAULT``) and prints one JSON line: when each accepted submission was
answered (epoch seconds) and the errors by type.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from copyleaks_provider.hooks.copyleaks import CopyleaksHook

ROOT = Path(__file__).resolve().parents[1]
#: The catalog's image host (:func:`image_host`) runs below the emulator's priority, as a CDN on other
#: machines would not take the emulator's CPU.
NICENESS = 10


@contextlib.contextmanager
def image_host() -> Iterator[str]:
    """The catalog's images (``<url>/samples/...``), served by an emulator process of their own at a
    lower priority, as a catalog's CDN is not Copyleaks: generating a sample in the API emulator
    held its event loop for 20-100 ms at a time, and requests arriving meanwhile were counted as one
    burst."""
    from bench.common import server_process  # the development tools: not on a submitter's path

    with server_process(["copyleaks_emulator", "--log-level", "warning"], niceness=NICENESS) as url:
        yield f"{url}/samples"


async def submit(prefix: str, count: int, image_base: str) -> dict:
    hook = CopyleaksHook()
    requests = [
        hook.build_submit_request(
            f"{prefix}-{i:04d}", f"{image_base}/img-{i % 500:05d}.jpg", f"img-{i:05d}.jpg", sandbox=True
        )
        for i in range(count)
    ]
    accepted: list[float] = []
    errors: Counter[str] = Counter()
    messages: list[str] = []
    async with hook.get_async_client() as client:
        async for outcome in client.submit_many(requests):
            if outcome.error is None:
                accepted.append(time.time())
            else:
                errors[type(outcome.error).__name__] += 1
                messages.append(str(outcome.error))
    return {"accepted": accepted, "errors": dict(errors), "messages": messages[:3]}


def start(processes: int, per_process: int, image_base: str, env: dict[str, str]) -> list[subprocess.Popen]:
    """Start ``processes`` submitters of ``per_process`` images each, with ``env`` on top of ours, at the
    normal priority, as Airflow runs its task processes (niced below busy neighbours, they woke up past
    their send slots and missed them in a row)."""
    return [
        subprocess.Popen(
            [sys.executable, "-m", "bench.account_submitter", f"p{n}", str(per_process), image_base],
            env={**os.environ, **env},
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for n in range(processes)
    ]


def finish(running: list[subprocess.Popen], timeout: float | None = None) -> list[dict]:
    """Wait for every submitter; what each printed. A failed one (or one past ``timeout``) raises, with
    its stderr, and the others are killed rather than left submitting to the next test's emulator."""
    outputs = []
    try:
        for process in running:
            out, err = process.communicate(timeout=timeout)
            if process.returncode:
                raise RuntimeError(f"a submitter failed: {err[-3000:]}")
            outputs.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        for process in running:
            if process.poll() is None:
                process.kill()
                process.communicate()
    return outputs


if __name__ == "__main__":
    prefix, count, image_base = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    print(json.dumps(asyncio.run(submit(prefix, count, image_base))))
