"""The emulator's fault knobs and webhook delivery: 429/5xx, latency, drop, duplicate, delay, reorder,
retries with backoff, the bounded worker pool and the seeded, replayable dice."""

from __future__ import annotations

import time

import httpx
import pytest

from copyleaks_provider.models import WebhookBody
from tests.support.emulator import auth, check_json, put, submit_body
from tests.support.polling import wait_for


@pytest.fixture(autouse=True)
def _enterprise_rate(emulator):
    """These tests fire raw requests as fast as they can, about faults rather than budgets: the
    account's API limit is lifted here (as for an enterprise contract). The documented limits have
    tests of their own (tests/test_emulator_limits.py)."""
    emulator.reset(api_requests_per_second=0)


def submit_many(emulator, recorder, n: int, prefix: str, first_image: int = 100) -> list[str]:
    headers = auth(emulator)
    scan_ids = [f"{prefix}-{i:02d}" for i in range(n)]
    for i, scan_id in enumerate(scan_ids):
        body = submit_body(emulator, recorder, f"img-{first_image + i:05d}.jpg")
        assert put(emulator, scan_id, body, headers=headers).status_code == 201
    return scan_ids


# --- API faults -----------------------------------------------------------------------------------------
def test_injected_429_carries_retry_after_on_submit_and_check(emulator, recorder):
    emulator.set_faults(p_429=1.0, retry_after_seconds=7)
    limited = put(emulator, "fault-429", submit_body(emulator, recorder))
    assert limited.status_code == 429 and limited.headers["Retry-After"] == "7" and limited.json()["message"]
    checked = check_json(emulator, "fault-429-check", b"not even read")
    assert checked.status_code == 429 and checked.headers["Retry-After"] == "7"
    state = emulator.state()
    assert state["injected_429"] == 2 and state["scans"] == 0 and state["credits_remaining"] == 1_000_000
    assert state["logins"] == 2  # login itself is never rate limited


def test_injected_5xx_is_a_503_and_nothing_is_registered(emulator, recorder):
    emulator.set_faults(p_5xx=1.0)
    response = put(emulator, "fault-5xx", submit_body(emulator, recorder))
    assert response.status_code == 503 and "maintenance" in response.json()["message"]
    assert check_json(emulator, "fault-5xx-check", b"x").status_code == 503
    emulator.set_faults(p_5xx=0.0)
    assert put(emulator, "fault-5xx", submit_body(emulator, recorder)).status_code == 201  # the retry
    state = emulator.wait_idle()
    assert state["injected_5xx"] == 2 and state["submissions"] == {"fault-5xx": 1}


def test_probabilities_mix_outcomes_and_the_seed_replays_them(emulator, recorder):
    def statuses() -> list[int]:
        headers = auth(emulator)
        body = submit_body(emulator, recorder, sandbox=True)
        return [put(emulator, f"dice-{i:02d}", body, headers=headers).status_code for i in range(30)]

    emulator.set_faults(p_429=0.3, p_5xx=0.3)
    first = statuses()
    assert {201, 429, 503} <= set(first)
    emulator.reset(p_429=0.3, p_5xx=0.3)  # a reset reseeds the dice
    assert statuses() == first
    emulator.reset(p_429=0.3, p_5xx=0.3, seed=7)
    assert statuses() != first


def test_api_latency_delays_every_call(emulator, recorder):
    emulator.set_faults(api_latency_ms=200)
    start = time.monotonic()
    headers = auth(emulator)
    assert time.monotonic() - start >= 0.2
    start = time.monotonic()
    assert put(emulator, "slow-1", submit_body(emulator, recorder), headers=headers).status_code == 201
    assert time.monotonic() - start >= 0.2


# --- webhook faults -----------------------------------------------------------------------------------
def test_dropped_webhooks_are_never_sent(emulator, recorder):
    emulator.set_faults(p_drop_webhook=1.0)
    submit_many(emulator, recorder, 3, "drop")
    state = emulator.wait_idle()
    assert state["webhooks_dropped"] == 3 and state["webhooks_sent"] == 0 and recorder.bodies == []
    assert state["scans_completed"] == 3


def test_duplicated_webhooks_arrive_twice(emulator, recorder):
    emulator.set_faults(p_duplicate_webhook=1.0)
    put(emulator, "dup-1", submit_body(emulator, recorder))
    state = emulator.wait_idle()
    assert [b["scannedDocument"]["scanId"] for b in recorder.bodies] == ["dup-1", "dup-1"]
    assert recorder.bodies[0] == recorder.bodies[1] and WebhookBody.model_validate(recorder.bodies[0])
    assert state["webhooks_duplicated"] == 1 and state["webhooks_acknowledged"] == 2


def test_delayed_webhooks_are_held_back(emulator, recorder):
    emulator.set_faults(p_delay_webhook=1.0, delay_webhook_ms=300)
    start = time.monotonic()
    put(emulator, "delay-1", submit_body(emulator, recorder))
    # held, not lost
    assert wait_for(lambda: emulator.state()["in_flight"], "a webhook in flight", 10, 0.01) == 1
    assert recorder.wait_for(1) and time.monotonic() - start >= 0.3
    assert emulator.wait_idle()["webhooks_delayed"] == 1


def test_webhook_latency_delays_each_delivery(emulator, recorder):
    emulator.set_faults(webhook_latency_ms=250)
    start = time.monotonic()
    put(emulator, "latency-1", submit_body(emulator, recorder))
    recorder.wait_for(1)
    assert recorder.arrivals[0] - start >= 0.25


def test_reordered_webhooks_arrive_out_of_order(emulator, recorder):
    # A reordered delivery waits a random time of up to the latency (and 100 ms): 1.5 s dwarfs the time
    # between two scans finishing, however busy the machine, so the order is the delays', not the scans'.
    emulator.set_faults(reorder=True, webhook_latency_ms=1500)
    scan_ids = submit_many(emulator, recorder, 12, "order")
    order = [b["scannedDocument"]["scanId"] for b in recorder.wait_for(12)]
    assert sorted(order) == scan_ids and order != scan_ids


def test_failed_deliveries_are_retried_with_backoff_then_given_up(emulator, recorder):
    emulator.set_faults(webhook_max_tries=3, webhook_retry_base_seconds=0.1)
    recorder.fail_next = 2
    put(emulator, "retry-1", submit_body(emulator, recorder))
    assert len(recorder.wait_for(1)) == 1
    state = emulator.wait_idle()
    assert (
        state["webhooks_sent"] == 3 and state["webhooks_acknowledged"] == 1 and state["webhooks_failed"] == 0
    )
    gaps = [later - earlier for earlier, later in zip(recorder.arrivals, recorder.arrivals[1:], strict=False)]
    assert gaps[0] >= 0.1 and gaps[1] >= 0.2  # 0.1 s, then doubled

    recorder.fail_next, recorder.fail_status = 10, 404  # any non-2xx answer is a failure
    put(emulator, "retry-2", submit_body(emulator, recorder, "img-00031.jpg"))
    state = emulator.wait_idle()
    assert state["webhooks_failed"] == 1 and state["webhooks_sent"] == 6 and len(recorder.bodies) == 1
    assert state["webhooks_unanswered"] == 0  # refusals are answers


def test_an_unreachable_webhook_is_retried_then_given_up(emulator, recorder):
    from image_audit_dev.servers import free_port

    emulator.set_faults(webhook_max_tries=2, webhook_retry_base_seconds=0.01)
    body = submit_body(emulator, recorder, webhooks={"url": f"http://127.0.0.1:{free_port()}/hook"})
    put(emulator, "nowhere-1", body)
    state = emulator.wait_idle()
    assert (
        state["webhooks_sent"] == 2 and state["webhooks_failed"] == 1 and state["webhooks_acknowledged"] == 0
    )
    assert state["webhooks_unanswered"] == 2


def test_the_worker_pool_is_bounded(start_emulator, recorder):
    emulator = start_emulator(workers=2)
    # Each fetch takes 1 s, so the queue outlasts the six submissions even on a loaded machine (at
    # 0.15 s a slow run of PUTs let the pool drain it before it was ever seen).
    recorder.slow_seconds = 1.0
    headers = auth(emulator)
    for i in range(6):
        body = submit_body(emulator, recorder, url=recorder.image_url("slow", f"img-{i:05d}.jpg"))
        assert put(emulator, f"pool-{i}", body, headers=headers).status_code == 201  # answered at once
    busy = wait_for(lambda: (s := emulator.state())["queue_depth"] and s, "a queued scan", 10, 0.01)
    # Jobs being scanned, bounded by the pool (in_flight also counts webhooks still being delivered)
    assert busy["scanning"] <= 2
    assert len(recorder.wait_for(6)) == 6 and recorder.max_concurrent == 2
    assert emulator.wait_idle()["scans_completed"] == 6


def test_everything_at_once_still_delivers_every_kept_result_exactly_as_modelled(emulator, recorder):
    emulator.set_faults(
        p_duplicate_webhook=0.3,
        p_delay_webhook=0.3,
        delay_webhook_ms=100,
        reorder=True,
        webhook_latency_ms=20,
    )
    recorder.fail_next = 3
    scan_ids = submit_many(emulator, recorder, 20, "chaos")
    state = emulator.wait_idle()
    assert {b["scannedDocument"]["scanId"] for b in recorder.bodies} == set(scan_ids)
    # every try is acknowledged, refused by the receiver (its 3 failures), or left without an answer
    # (a connection the machine's load broke: the receiver may have stored that body, and it is retried)
    acknowledged, unanswered = state["webhooks_acknowledged"], state["webhooks_unanswered"]
    assert acknowledged == 20 + state["webhooks_duplicated"]
    assert state["webhooks_sent"] == acknowledged + 3 + unanswered
    assert acknowledged <= len(recorder.bodies) <= acknowledged + unanswered
    for body in recorder.bodies:
        WebhookBody.model_validate(body).detection()
    assert httpx.get(f"{emulator.url}/admin/state").json()["in_flight"] == 0
