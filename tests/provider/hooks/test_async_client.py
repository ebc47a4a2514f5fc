"""``CopyleaksAsyncClient``: many submissions at once, bounded and paced, cancelled cleanly, never blocking
the event loop (against the fake of tests/support/fake_copyleaks.py)."""

from __future__ import annotations

import asyncio
from contextlib import aclosing

import pytest

from copyleaks_provider.exceptions import (
    CopyleaksBadRequestError,
    CopyleaksConflictError,
    CopyleaksCreditsError,
    CopyleaksValidationError,
)
from tests.support.fake_copyleaks import (
    LOGIN,
    SUBMIT,
    make_hook,
    request_for,
)


async def test_submit_many_respects_max_concurrency(fake):
    hook = make_hook(fake.url, max_concurrency=3)
    fake.delay = 0.1
    requests = [request_for(hook, n) for n in range(10)]
    async with hook.get_async_client() as client:
        outcomes = [outcome async for outcome in client.submit_many(requests)]

    assert sorted(o.scan_id for o in outcomes) == sorted(r.scan_id for r in requests)
    assert all(o.error is None for o in outcomes)
    assert fake.max_in_flight == 3
    assert fake.count(SUBMIT) == 10
    assert fake.count(LOGIN) == 1  # concurrent workers wait for one login


async def test_submit_many_reports_each_error_and_goes_on(fake):
    hook = make_hook(fake.url, max_concurrency=1)
    fake.fail(SUBMIT, 409, body={"message": "scan id already exists"})
    fake.fail(SUBMIT, 400, body={"message": "url is not reachable"})
    async with hook.get_async_client() as client:
        outcomes = [o async for o in client.submit_many(request_for(hook, n) for n in range(4))]
    assert [type(o.error) for o in outcomes] == [
        CopyleaksConflictError,
        CopyleaksBadRequestError,
        type(None),
        type(None),
    ]
    assert [o.scan_id for o in outcomes] == ["scan-0000", "scan-0001", "scan-0002", "scan-0003"]


async def test_breaking_out_of_submit_many_cancels_the_rest(fake):
    hook = make_hook(fake.url, max_concurrency=2)
    fake.delay = 0.05
    fake.fail(SUBMIT, 402)
    seen = []
    async with hook.get_async_client() as client:
        async with aclosing(client.submit_many(request_for(hook, n) for n in range(50))) as outcomes:
            async for outcome in outcomes:
                seen.append(outcome)
                if isinstance(outcome.error, CopyleaksCreditsError):
                    break
        assert asyncio.all_tasks() == {asyncio.current_task()}
        sent = await fake.settled_count(SUBMIT)  # with every request written before the break
        await fake.round_trips(6)  # six submits' time: a worker still running would send several more
        assert await fake.settled_count(SUBMIT) == sent < 10
    assert isinstance(seen[-1].error, CopyleaksCreditsError)


async def test_leaving_the_client_cancels_an_abandoned_submit_many(fake):
    hook = make_hook(fake.url, max_concurrency=4)
    fake.delay = 0.05
    async with hook.get_async_client() as client:
        async for _outcome in client.submit_many(request_for(hook, n) for n in range(50)):
            break  # no aclosing: the client's exit must still stop the workers
    assert asyncio.all_tasks() == {asyncio.current_task()}
    sent = await fake.settled_count(SUBMIT)  # with every request written before the exit
    await fake.round_trips(6)  # six submits' time: a worker still running would send several more
    assert await fake.settled_count(SUBMIT) == sent < 20


async def test_a_failing_request_iterable_propagates_instead_of_hanging(fake):
    hook = make_hook(fake.url, max_concurrency=2)

    def requests():
        yield request_for(hook, 1)
        raise CopyleaksValidationError("row 2 is broken")

    async with hook.get_async_client() as client:
        with pytest.raises(CopyleaksValidationError, match="row 2 is broken"):
            await asyncio.wait_for(_drain(client.submit_many(requests())), timeout=10)
    assert asyncio.all_tasks() == {asyncio.current_task()}


async def _drain(outcomes) -> list:
    async with aclosing(outcomes):
        return [o async for o in outcomes]


async def test_requests_per_second_spaces_requests(fake):
    hook = make_hook(fake.url, max_concurrency=8, requests_per_second=20)
    await asyncio.to_thread(hook.login)  # the login would take a slot of its own
    async with hook.get_async_client() as client:
        outcomes = [o async for o in client.submit_many(request_for(hook, n) for n in range(5))]
    assert all(o.error is None for o in outcomes)
    arrivals = sorted(r.arrived for r in fake.received(SUBMIT))
    assert arrivals[-1] - arrivals[0] >= 4 / 20 * 0.9


async def test_async_retry_waits_do_not_block_the_loop(fake):
    hook = make_hook(fake.url)
    ticks = 0

    async def ticker():
        nonlocal ticks
        while True:
            await asyncio.sleep(0.02)  # the measure itself: a tick every 20 ms while the loop is free
            ticks += 1

    fake.fail(SUBMIT, 429, **{"Retry-After": "1"})
    ticking = asyncio.create_task(ticker())
    try:
        async with hook.get_async_client() as client:
            await client.submit_image(request_for(hook))
    finally:
        ticking.cancel()
    assert fake.count(SUBMIT) == 2
    assert ticks >= 20  # the loop kept running through the 1 s wait
