"""The audit's webhook receiver (``image_audit.webhook``: the provider's receiver storing into the
warehouse) over real HTTP, on SQLite and PostgreSQL: authentication, validation, idempotence, durability
(503 while the warehouse is down), NOTIFY, and emulator -> receiver -> results row."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import sys
from collections import Counter
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.engine import make_url

import image_audit.warehouse.callback_sink as callback_sink_module
from copyleaks_provider.hooks.copyleaks import CopyleaksHook
from copyleaks_provider.models import (
    ImageInfo,
    ImageShape,
    RleMask,
    ScannedDocument,
    Summary,
    WebhookBody,
    encode_rle_mask,
)
from copyleaks_provider.scan_ids import validate_scan_id
from copyleaks_provider.webhooks.auth import webhook_token, webhook_url
from copyleaks_provider.webhooks.callbacks import UNRECOGNISED_REASON
from image_audit.warehouse.engine import get_engine
from image_audit.warehouse.lifecycle import ScanState
from image_audit.warehouse.schema import audit_results, migrate
from image_audit.webhook import create_warehouse_receiver_app
from image_audit_dev.servers import BackgroundServer, free_port, server_process
from tests.support.factories import (
    MODEL,
    documented_error_body,
    error_body,
    result_body,
    seed_scan,
    with_value,
)
from tests.support.tcp_proxy import AsyncTcpProxy
from tests.support.warehouse import failed_callbacks, requires_postgres, result_count, scan_row

SECRET = "current-secret"
OLD_SECRET = "previous-secret"


@pytest.fixture
def receiver(warehouse_url):
    app = create_warehouse_receiver_app(warehouse_url=warehouse_url, webhook_secrets=[SECRET, OLD_SECRET])
    with BackgroundServer(app) as server:
        yield server


def post(server, scan_id: str, body, *, secret: str = SECRET, token: str | None = None) -> httpx.Response:
    url = webhook_url(server.url, secret, scan_id)
    if token is not None:
        url = f"{server.url}/callbacks/{scan_id}/{token}"
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return httpx.post(url, content=content, headers={"content-type": "application/json"}, timeout=30)


def test_a_result_is_stored_once_and_completes_the_scan(receiver, warehouse_url):
    seed_scan(warehouse_url, "scan-ok")
    first = post(receiver, "scan-ok", result_body("scan-ok"))
    assert first.status_code == 200 and first.json() == {"status": "stored"}
    again = post(receiver, "scan-ok", result_body("scan-ok", ai_pixels=16))
    assert again.status_code == 200 and again.json() == {"status": "duplicate"}

    assert scan_row(warehouse_url, "scan-ok")["state"] == "completed"
    with get_engine(warehouse_url).connect() as conn:
        rows = conn.execute(select(audit_results)).mappings().all()
    assert len(rows) == 1
    row = rows[0]
    assert (row["ai"], row["width"], row["height"]) == (0.25, 8, 4)  # the first callback, not the duplicate
    assert row["mask_starts"] == [0] and row["mask_lengths"] == [8]
    assert row["image_metadata"] == {"issuedBy": "test"} and row["developer_payload"] == "run-1"
    assert WebhookBody.model_validate(row["raw_body"]).detection().mask().sum() == 8


@pytest.mark.parametrize(
    ("token", "status"),
    [
        ("0" * 64, 403),
        ("not-hex", 403),
        (webhook_token(SECRET, "another-scan"), 403),
        (webhook_token("x", "s"), 403),
    ],
)
def test_forged_or_foreign_tokens_are_refused_and_change_nothing(receiver, warehouse_url, token, status):
    seed_scan(warehouse_url, "scan-auth")
    response = post(receiver, "scan-auth", result_body("scan-auth"), token=token)
    assert response.status_code == status
    assert scan_row(warehouse_url, "scan-auth")["state"] == "submitted" and result_count(warehouse_url) == 0


def test_missing_token_is_401(receiver, warehouse_url):
    seed_scan(warehouse_url, "scan-notoken")
    response = httpx.post(f"{receiver.url}/callbacks/scan-notoken", json=result_body("scan-notoken"))
    assert response.status_code == 401 and result_count(warehouse_url) == 0


def test_previous_secret_is_accepted_during_rotation(receiver, warehouse_url):
    seed_scan(warehouse_url, "scan-rot")
    assert post(receiver, "scan-rot", result_body("scan-rot"), secret=OLD_SECRET).status_code == 200
    seed_scan(warehouse_url, "scan-rot2")
    assert post(receiver, "scan-rot2", result_body("scan-rot2"), secret="retired").status_code == 403


def test_unknown_scan_is_404(receiver, warehouse_url):
    assert post(receiver, "never-planned", result_body("never-planned")).status_code == 404
    assert result_count(warehouse_url) == 0


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        (b"{not json", "the body is not JSON"),
        (b"\xff\xfe{", "the body is not JSON"),  # not UTF-8 either
        (b'{"summary": {"ai": NaN, "human": Infinity}}', "NaN, which is not JSON"),  # Python takes them
        (b'{"summary": {"ai": 1e400}}', "beyond the range of a 64-bit float"),  # would be Infinity
        (b'{"n": ' + b"9" * 5000 + b"}", "the body is not JSON"),  # more digits than Python parses
        (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
    ],
)
def test_an_authentic_body_that_is_not_keepable_json_is_kept_as_its_bytes(
    receiver, warehouse_url, body, problem
):
    """Authentic, so never refused: a 4xx would make Copyleaks retry, then drop it. Its bytes are kept
    (base64) and the scan fails saying why; a retry of the same bytes is a duplicate."""
    seed_scan(warehouse_url, "scan-bad")
    response = post(receiver, "scan-bad", body)
    assert response.status_code == 200 and response.json() == {"status": "unrecognised_recorded"}
    row = scan_row(warehouse_url, "scan-bad")
    assert row["state"] == "failed" and problem in row["last_error"], row["last_error"]
    [kept] = failed_callbacks(warehouse_url)
    assert kept["kind"] == "unreadable" and base64.b64decode(kept["raw_body"]["base64"]) == body
    assert kept["body_sha256"] == hashlib.sha256(body).hexdigest()
    assert post(receiver, "scan-bad", body).json() == {"status": "duplicate"}
    assert len(failed_callbacks(warehouse_url)) == 1 and result_count(warehouse_url) == 0
    assert post(receiver, "scan-bad", result_body("scan-bad")).json() == {"status": "stored"}


@pytest.mark.parametrize(
    ("path", "value", "problem"),
    [
        ("imageInfo.shape", {"height": 45_000, "width": 60_000}, "maximum of 27000000 pixels"),
        ("imageInfo.shape.width", 2**40, "imageInfo.shape.width"),
        ("result", {"starts": [0], "lengths": [2_700_000_000]}, "outside"),
        ("result", {"starts": [0, 0, 0], "lengths": [32, 32, 32]}, "more pixels than"),
        ("scannedDocument.actualCredits", 2**31, "actualCredits"),
        ("scannedDocument.expectedCredits", -1, "expectedCredits"),
        ("model", "m" * 65, "model"),
        ("model", "ai-image\x00", "NUL"),
        ("developerPayload", "run\x001", "NUL"),
        ("imageInfo.metadata.issuedBy", "camera\x00", "NUL"),
        ("model", "ai-image-\ud800", "lone surrogates"),
    ],
)
def test_out_of_range_values_are_kept_as_unrecognised_not_answered_5xx(
    receiver, warehouse_url, path, value, problem
):
    """What no Copyleaks answer holds, and the warehouse's columns could not: kept verbatim, 200."""
    seed_scan(warehouse_url, "scan-range")
    body = with_value(result_body("scan-range"), path, value)
    response = post(receiver, "scan-range", body)
    assert response.status_code == 200 and response.json() == {"status": "unrecognised_recorded"}
    row = scan_row(warehouse_url, "scan-range")
    assert row["state"] == "failed" and problem in row["last_error"], row["last_error"]
    [kept] = failed_callbacks(warehouse_url)
    assert kept["kind"] == "unrecognised" and kept["raw_body"] == body
    assert "\x00" not in row["last_error"] and result_count(warehouse_url) == 0


def test_a_body_for_another_scan_is_422_and_changes_nothing(receiver, warehouse_url):
    seed_scan(warehouse_url, "scan-shape")
    for body in (
        result_body("someone-else"),
        error_body("someone-else"),
        {"scannedDocument": {"scanId": "someone-else"}, "odd": True},  # unrecognised, but not ours
    ):
        response = post(receiver, "scan-shape", body)
        assert response.status_code == 422 and "scanId" in response.json()["detail"]
    assert scan_row(warehouse_url, "scan-shape")["state"] == "submitted"
    assert result_count(warehouse_url) == 0 and failed_callbacks(warehouse_url) == []


HOSTILE = "hostile-value-<script>"


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        pytest.param({"scannedDocument": {"scanId": "scan-odd"}}, "needs either 'error'", id="neither"),
        pytest.param({"status": 1, "error": HOSTILE, "developerPayload": "run-1"}, "error:", id="error-text"),
        pytest.param({"status": 1, "error": {"id": HOSTILE, "message": "m"}}, "error.code", id="no-code"),
        pytest.param({**result_body("scan-odd"), "summary": {"ai": 0.9, "human": 0.9}}, "summary", id="sum"),
        pytest.param(
            {**result_body("scan-odd"), "result": {"starts": [30], "lengths": [10]}}, "outside", id="mask"
        ),
        pytest.param({"event": "scanCompleted", "payload": HOSTILE}, "body", id="unknown-object"),
        pytest.param([1, HOSTILE], "the body is an array, not a JSON object", id="array"),
        pytest.param(HOSTILE, "the body is a string, not a JSON object", id="string"),
        pytest.param(None, "the body is null, not a JSON object", id="null"),
    ],
)
def test_an_unrecognised_authentic_body_is_kept_and_fails_the_scan(receiver, warehouse_url, body, problem):
    """A 4xx would make Copyleaks retry, then drop the callback: it is kept verbatim instead, the scan
    fails with a clear reason (no values from the body in it), and a later result still wins."""
    seed_scan(warehouse_url, "scan-odd")
    first = post(receiver, "scan-odd", body)
    assert first.status_code == 200 and first.json() == {"status": "unrecognised_recorded"}, first.text
    row = scan_row(warehouse_url, "scan-odd")
    assert row["state"] == "failed" and row["last_error"].startswith(UNRECOGNISED_REASON)
    assert problem in row["last_error"] and HOSTILE not in row["last_error"]
    [kept] = failed_callbacks(warehouse_url)
    assert (kept["scan_id"], kept["kind"], kept["reason"]) == ("scan-odd", "unrecognised", row["last_error"])
    assert kept["raw_body"] == body and len(kept["body_sha256"]) == 64

    assert post(receiver, "scan-odd", body).json() == {"status": "duplicate"}  # Copyleaks' retry
    assert scan_row(warehouse_url, "scan-odd") == row and len(failed_callbacks(warehouse_url)) == 1

    assert post(receiver, "scan-odd", result_body("scan-odd")).json() == {"status": "stored"}
    done = scan_row(warehouse_url, "scan-odd")
    assert done["state"] == "completed" and done["last_error"] is None
    assert len(failed_callbacks(warehouse_url)) == 1  # still kept


def test_the_documented_error_webhook_fails_the_scan_with_its_id_and_is_kept(receiver, warehouse_url):
    seed_scan(warehouse_url, "scan-doc")
    body = documented_error_body()
    first = post(receiver, "scan-doc", body)
    assert first.status_code == 200 and first.json() == {"status": "failed_recorded"}
    row = scan_row(warehouse_url, "scan-doc")
    assert row["state"] == "failed"
    assert (
        row["last_error"] == "Copyleaks error download_failed (code 5): Failed to download the requested URL."
    )
    [kept] = failed_callbacks(warehouse_url, "scan-doc")
    assert (kept["kind"], kept["reason"], kept["raw_body"]) == ("error", row["last_error"], body)

    # Copyleaks' retry of the same webhook (spaced differently on the wire): nothing changes.
    again = httpx.post(
        webhook_url(receiver.url, SECRET, "scan-doc"), content=json.dumps(body, indent=2).encode(), timeout=30
    )
    assert again.json() == {"status": "duplicate"}
    assert scan_row(warehouse_url, "scan-doc") == row and len(failed_callbacks(warehouse_url)) == 1

    # Another error for a failed scan: kept too (no authentic callback is lost), the scan unchanged.
    other = documented_error_body("Temporarily unavailable.", id="service_unavailable", code=9)
    assert post(receiver, "scan-doc", other).json() == {"status": "duplicate"}
    assert scan_row(warehouse_url, "scan-doc") == row
    assert [k["raw_body"] for k in failed_callbacks(warehouse_url, "scan-doc")] == [body, other]

    # A result after the error still completes the scan.
    assert post(receiver, "scan-doc", result_body("scan-doc")).json() == {"status": "stored"}
    done = scan_row(warehouse_url, "scan-doc")
    assert done["state"] == "completed" and done["last_error"] is None and result_count(warehouse_url) == 1


def test_an_error_with_a_numeric_type_and_no_id_is_read_too(receiver, warehouse_url):
    """Older summaries give ``type`` as an integer; an error without ``id`` keeps the code alone."""
    seed_scan(warehouse_url, "scan-num")
    body = {"status": 1, "error": {"type": 1, "code": 8, "message": "The image quality is too low to scan."}}
    assert post(receiver, "scan-num", body).json() == {"status": "failed_recorded"}
    assert scan_row(warehouse_url, "scan-num")["last_error"] == (
        "Copyleaks error (code 8): The image quality is too low to scan."
    )


def test_a_forged_token_with_an_unrecognised_body_is_403_and_writes_nothing(receiver, warehouse_url):
    seed_scan(warehouse_url, "scan-forged")
    for body in ({"anything": 1}, [1, 2], documented_error_body()):
        for token in (
            "0" * 64,
            webhook_token(SECRET, "another-scan"),
            webhook_token("guessed", "scan-forged"),
        ):
            assert post(receiver, "scan-forged", body, token=token).status_code == 403
    assert scan_row(warehouse_url, "scan-forged")["state"] == "submitted"
    assert failed_callbacks(warehouse_url) == [] and result_count(warehouse_url) == 0


def test_an_unrecognised_body_for_an_unknown_scan_is_404_and_writes_nothing(receiver, warehouse_url):
    assert post(receiver, "never-planned", {"anything": 1}).status_code == 404
    assert post(receiver, "never-planned", documented_error_body()).status_code == 404
    assert failed_callbacks(warehouse_url) == []


def test_oversized_body_is_413(warehouse_url):
    seed_scan(warehouse_url, "scan-big")
    app = create_warehouse_receiver_app(
        warehouse_url=warehouse_url, webhook_secrets=[SECRET], max_body_bytes=1024
    )
    with BackgroundServer(app) as server:
        body = result_body("scan-big")
        body["developerPayload"] = "x" * 5000
        assert post(server, "scan-big", body).status_code == 413

        def chunks():  # no Content-Length: the limit holds while streaming too
            yield b'{"a": "'
            yield b"x" * 4096
            yield b'"}'

        url = webhook_url(server.url, SECRET, "scan-big")
        assert httpx.post(url, content=chunks()).status_code == 413
    assert result_count(warehouse_url) == 0


def test_error_callback_fails_the_scan_and_a_result_still_wins(receiver, warehouse_url):
    """The older shape (scannedDocument + error{code, message}) still works."""
    seed_scan(warehouse_url, "scan-err")
    assert post(receiver, "scan-err", error_body("scan-err")).json() == {"status": "failed_recorded"}
    row = scan_row(warehouse_url, "scan-err")
    assert row["state"] == "failed" and row["last_error"] == "Copyleaks error (code 400): image too small"
    assert post(receiver, "scan-err", error_body("scan-err")).json() == {"status": "duplicate"}
    assert scan_row(warehouse_url, "scan-err") == row
    [kept] = failed_callbacks(warehouse_url, "scan-err")
    assert kept["raw_body"] == error_body("scan-err") and kept["kind"] == "error"
    # Out of order: a result after the error completes the scan.
    assert post(receiver, "scan-err", result_body("scan-err")).json() == {"status": "stored"}
    assert scan_row(warehouse_url, "scan-err")["state"] == "completed"
    # And an error after a result changes nothing.
    assert post(receiver, "scan-err", error_body("scan-err")).json() == {"status": "duplicate"}
    assert scan_row(warehouse_url, "scan-err")["state"] == "completed" and result_count(warehouse_url) == 1


def test_late_callback_completes_a_timed_out_scan(receiver, warehouse_url):
    seed_scan(warehouse_url, "scan-late", ScanState.TIMED_OUT)
    assert post(receiver, "scan-late", result_body("scan-late")).json() == {"status": "stored"}
    assert scan_row(warehouse_url, "scan-late")["state"] == "completed"


def test_scan_ids_with_url_reserved_characters_round_trip(receiver, warehouse_url):
    """Copyleaks' scan id alphabet includes "/", "%", quotes and braces: webhook_url percent-encodes
    them and the receiver must route, verify and store the decoded id."""
    import numpy as np

    scan_id = "a/b%2f&c=d;e'f\"g{h}<i>|~,."
    assert validate_scan_id(scan_id)
    seed_scan(warehouse_url, scan_id)
    mask = np.zeros((4, 8), dtype=bool)
    mask[1] = True
    starts, lengths = encode_rle_mask(mask)
    body = WebhookBody(
        scanned_document=ScannedDocument(scan_id=scan_id, actual_credits=1),
        model=MODEL,
        result=RleMask(starts=starts, lengths=lengths),
        summary=Summary(ai=0.25, human=0.75),
        image_info=ImageInfo(shape=ImageShape(height=4, width=8)),
    )
    response = httpx.post(webhook_url(receiver.url, SECRET, scan_id), json=body.wire(), timeout=30)
    assert response.json() == {"status": "stored"}
    assert scan_row(warehouse_url, scan_id)["state"] == "completed"
    other = "a/b%2f&c=d;e'f\"g{h}<i>|~,x"  # same token route, another (unknown) scan
    assert post(receiver, other, result_body(other), token=webhook_token(SECRET, scan_id)).status_code == 403


def test_concurrent_duplicates_and_errors_store_exactly_one_result_per_scan(receiver, warehouse_url):
    """Copyleaks retries overlap: results and errors for the same scans arrive at once, in any order."""
    scan_ids = [f"scan-race-{i}" for i in range(8)]
    for scan_id in scan_ids:
        seed_scan(warehouse_url, scan_id)
    calls = [
        (i, body)
        for i in scan_ids
        for body in (result_body(i), error_body(i), documented_error_body(), result_body(i, ai_pixels=4))
    ]

    async def send_all() -> list[tuple[str, str]]:
        async with httpx.AsyncClient(timeout=60) as client:

            async def send(scan_id: str, body: dict) -> tuple[str, str]:
                response = await client.post(webhook_url(receiver.url, SECRET, scan_id), json=body)
                assert response.status_code == 200, response.text
                return scan_id, response.json()["status"]

            return await asyncio.gather(*(send(i, b) for i, b in calls * 2))

    outcomes = asyncio.run(send_all())
    for scan_id in scan_ids:
        statuses = sorted(status for i, status in outcomes if i == scan_id)
        assert statuses.count("stored") == 1, statuses
        row = scan_row(warehouse_url, scan_id)
        assert row["state"] == "completed" and row["last_error"] is None
    assert result_count(warehouse_url) == len(scan_ids)
    # Each distinct error body kept once per scan, however the copies raced.
    kept = Counter((k["scan_id"], k["raw_body"].get("status")) for k in failed_callbacks(warehouse_url))
    assert kept == {(i, status): 1 for i in scan_ids for status in (None, 1)}


def test_json_nested_just_below_the_parser_limit_is_kept_never_a_4xx_or_5xx(receiver, warehouse_url):
    """Depths the parser accepts but the serialiser of raw_body may not: kept (as bytes if need be)."""
    seed_scan(warehouse_url, "scan-deep")
    statuses = set()
    for depth in range(900, 1001, 4):
        body = (
            json.dumps(result_body("scan-deep"))[:-1]
            + ', "extra": '
            + '{"a":' * depth
            + "1"
            + "}" * depth
            + "}"
        )
        statuses.add(post(receiver, "scan-deep", body.encode()).status_code)
    assert statuses == {200}, statuses
    assert httpx.get(f"{receiver.url}/health").status_code == 200


def test_health(receiver):
    assert httpx.get(f"{receiver.url}/health").json() == {"status": "ok"}


def test_sqlite_warehouse_down_gives_503_then_stores_after_it_returns(tmp_path):
    folder = tmp_path / "warehouse"
    folder.mkdir()
    url = f"sqlite:///{folder / 'w.db'}"
    migrate(get_engine(url))
    seed_scan(url, "scan-down")
    get_engine(url).dispose()
    app = create_warehouse_receiver_app(warehouse_url=url, webhook_secrets=[SECRET])
    with BackgroundServer(app) as server:
        folder.rename(tmp_path / "gone")
        assert post(server, "scan-down", result_body("scan-down")).status_code == 503
        assert httpx.get(f"{server.url}/health").status_code == 503
        (tmp_path / "gone").rename(folder)
        assert post(server, "scan-down", result_body("scan-down")).status_code == 200
    assert scan_row(url, "scan-down")["state"] == "completed"


@pytest.fixture
def proxied_postgres(postgres_databases):
    """A migrated PostgreSQL warehouse, its URL, and the receiver's URL through a cuttable proxy."""
    url = postgres_databases.create()
    proxy = None
    try:
        migrate(get_engine(url))
        proxy = AsyncTcpProxy(make_url(url).port or 5432).start()
        via_proxy = make_url(url).set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
        yield url, via_proxy, proxy
    finally:
        if proxy is not None:
            proxy.close()
        postgres_databases.drop(url)


@requires_postgres
def test_postgres_warehouse_down_gives_503_then_stores_after_it_returns(proxied_postgres):
    url, via_proxy, proxy = proxied_postgres
    seed_scan(url, "scan-pg-down")
    with BackgroundServer(
        create_warehouse_receiver_app(warehouse_url=via_proxy, webhook_secrets=[SECRET])
    ) as server:
        assert httpx.get(f"{server.url}/health").status_code == 200
        proxy.cut()
        assert post(server, "scan-pg-down", result_body("scan-pg-down")).status_code == 503
        assert httpx.get(f"{server.url}/health").status_code == 503
        assert scan_row(url, "scan-pg-down")["state"] == "submitted" and result_count(url) == 0
        proxy.restore()
        assert post(server, "scan-pg-down", result_body("scan-pg-down")).json() == {"status": "stored"}
    assert scan_row(url, "scan-pg-down")["state"] == "completed"


@requires_postgres
def test_stalled_postgres_gives_503_in_bounded_time_not_a_hung_request(proxied_postgres, monkeypatch):
    """A partition (packets go nowhere, no reset) must end in a 503 Copyleaks retries, not a hang."""
    monkeypatch.setattr(callback_sink_module, "DATABASE_TIMEOUT_SECONDS", 1.0)
    url, via_proxy, proxy = proxied_postgres
    seed_scan(url, "scan-stall")
    with BackgroundServer(
        create_warehouse_receiver_app(warehouse_url=via_proxy, webhook_secrets=[SECRET])
    ) as server:
        assert httpx.get(f"{server.url}/health").status_code == 200  # a pooled connection exists
        proxy.stall()
        assert post(server, "scan-stall", result_body("scan-stall")).status_code == 503  # httpx timeout: 30 s
        proxy.restore()
        assert post(server, "scan-stall", result_body("scan-stall")).json() == {"status": "stored"}
    assert scan_row(url, "scan-stall")["state"] == "completed" and result_count(url) == 1


@requires_postgres
def test_postgres_notifies_waiting_triggers(postgres_databases):
    import asyncpg

    url = postgres_databases.create()
    try:
        migrate(get_engine(url))
        seed_scan(url, "scan-notify", run_id="run-n")
        app = create_warehouse_receiver_app(warehouse_url=url, webhook_secrets=[SECRET])

        async def listen_and_post(server) -> dict:
            dsn = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
            conn = await asyncpg.connect(dsn)
            received: asyncio.Queue = asyncio.Queue()
            await conn.add_listener("image_audit_scans", lambda *args: received.put_nowait(args[-1]))
            try:
                await asyncio.to_thread(post, server, "scan-notify", result_body("scan-notify"))
                return json.loads(await asyncio.wait_for(received.get(), timeout=10))
            finally:
                await conn.close()

        with BackgroundServer(app) as server:
            payload = asyncio.run(listen_and_post(server))
        assert payload == {"dag_id": "image_catalog_audit", "run_id": "run-n"}
    finally:
        postgres_databases.drop(url)


def test_emulator_to_receiver_to_results_row(emulator, sqlite_warehouse_url):
    """A real submit through the hook; the emulator fetches, decodes and calls our receiver back."""
    app = create_warehouse_receiver_app(warehouse_url=sqlite_warehouse_url, webhook_secrets=[SECRET])
    with BackgroundServer(app) as server:
        hook = CopyleaksHook(settings=emulator.connection_settings(server.url, SECRET))
        for scan_id, name in [("e2e-good", "img-00001.jpg"), ("e2e-tiny", None)]:
            seed_scan(sqlite_warehouse_url, scan_id)
            url = emulator.sample_url(name) if name else emulator.sample_url("t.png", "tiny")
            hook.submit_image(
                hook.build_submit_request(scan_id, url, Path(url).name, developer_payload="p-1")
            )
        emulator.wait_idle()
    good = scan_row(sqlite_warehouse_url, "e2e-good")
    assert good["state"] == "completed"
    with get_engine(sqlite_warehouse_url).connect() as conn:
        stored = conn.execute(select(audit_results)).mappings().one()
    body = WebhookBody.model_validate(stored["raw_body"])
    mask = body.detection().mask()
    assert mask.shape == (stored["height"], stored["width"])
    assert abs(mask.mean() - stored["ai"]) < 1e-4 and stored["developer_payload"] == "p-1"
    tiny = scan_row(sqlite_warehouse_url, "e2e-tiny")
    assert tiny["state"] == "failed" and "512x512" in tiny["last_error"]
    assert tiny["last_error"].startswith("Copyleaks error image_quality_too_low (code 8): image too small")
    [kept] = failed_callbacks(sqlite_warehouse_url, "e2e-tiny")  # the emulator's documented error webhook
    assert kept["raw_body"]["status"] == 1 and "scannedDocument" not in kept["raw_body"]
    assert kept["raw_body"]["developerPayload"] == "p-1" and kept["reason"] == tiny["last_error"]


@pytest.fixture
def standalone_receiver(sqlite_warehouse_url, tmp_path):
    """``python -m image_audit.webhook`` in its own process group, as a public edge runs it."""
    port = free_port()
    env = dict(os.environ, AIRFLOW_CONN_IMAGE_AUDIT_WAREHOUSE=sqlite_warehouse_url)
    env["AIRFLOW_CONN_COPYLEAKS_DEFAULT"] = json.dumps(
        {"conn_type": "copyleaks", "login": "a@b.c", "password": "k", "extra": {"webhook_secret": "edge"}}
    )
    log_path = tmp_path / "receiver.log"
    command = [
        sys.executable,
        "-m",
        "image_audit.webhook",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    with server_process(command, port=port, env=env, log_path=log_path, timeout=30) as base:
        yield base, log_path


def test_the_receiver_runs_alone_with_the_connection_from_the_environment(
    standalone_receiver, sqlite_warehouse_url
):
    base, log_path = standalone_receiver
    seed_scan(sqlite_warehouse_url, "edge-scan")
    forged = httpx.post(webhook_url(base, "guess", "edge-scan"), json=result_body("edge-scan"), timeout=30)
    assert forged.status_code == 403
    response = httpx.post(webhook_url(base, "edge", "edge-scan"), json=result_body("edge-scan"), timeout=30)
    assert response.json() == {"status": "stored"}
    assert scan_row(sqlite_warehouse_url, "edge-scan")["state"] == "completed"
    assert "refused: bad token" in log_path.read_text()  # rejections are logged at INFO
