"""The Copyleaks emulator's API over real HTTP: login, async submit, sync check, admin, samples, CLI.

Webhook bodies are checked against our typed model (``WebhookBody`` / ``DetectionResponse``); a small
recorder app (tests/support/emulator.py) stands in for the receiver. Fault knobs: test_faults.py; the
account limits: test_limits.py.
"""

from __future__ import annotations

import io
import socketserver
import sys
import threading
from collections import Counter
from datetime import datetime, timedelta

import httpx
import pytest
from PIL import Image

from copyleaks_emulator.__main__ import build_parser, settings_from_args
from copyleaks_emulator.samples import sample_image
from copyleaks_provider.models import DetectionResponse, WebhookBody
from copyleaks_provider.scan_ids import DEFAULT_MODEL, canonical_model
from image_audit_dev.servers import free_port, server_process
from tests.support.clock import FakeClock
from tests.support.emulator import LOGIN, SUBMIT, auth, check_form, check_json, login, put, submit_body
from tests.support.polling import wait_for

FULL_MODEL = canonical_model(DEFAULT_MODEL)


def image_size(data: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(data)) as image:
        return image.size


def assert_detection_matches(detection: DetectionResponse, data: bytes) -> None:
    """The mask decodes to the image's real shape and summary.ai is its true fraction of AI pixels."""
    width, height = image_size(data)
    assert (detection.image_info.shape.width, detection.image_info.shape.height) == (width, height)
    mask = detection.mask()
    assert mask.shape == (height, width)
    assert abs(mask.mean() - detection.summary.ai) < 1e-5
    assert abs(detection.summary.ai + detection.summary.human - 1) < 1e-6


# --- login and tokens ---------------------------------------------------------------------------------
def test_login_returns_a_token_valid_48_hours(emulator):
    body = login(emulator)
    assert body[".expires"].endswith("Z")
    issued = datetime.fromisoformat(body[".issued"].replace("Z", "+00:00"))
    expires = datetime.fromisoformat(body[".expires"].replace("Z", "+00:00"))
    assert body["access_token"] and expires - issued == timedelta(hours=48)
    assert emulator.state()["logins"] == 1


@pytest.mark.parametrize(
    ("payload", "status"),
    [
        ({"email": "demo@image-audit.dev", "key": "wrong"}, 401),
        ({"email": "someone@else.dev", "key": "demo-api-key"}, 401),
        ({"email": "demo@image-audit.dev"}, 400),
        ([], 400),
    ],
)
def test_login_with_a_bad_key_or_body_is_refused(emulator, payload, status):
    response = httpx.post(f"{emulator.url}{LOGIN}", json=payload)
    assert response.status_code == status and response.json()["message"]
    assert emulator.state()["logins"] == 0


def test_login_with_invalid_json_is_a_400(emulator):
    response = httpx.post(
        f"{emulator.url}{LOGIN}", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert response.status_code == 400 and "JSON" in response.json()["message"]


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer nope"},
        {"Authorization": "Basic ZGVtbzpkZW1v"},
        {"Authorization": "Bearer"},
    ],
)
def test_api_calls_need_a_bearer_token(emulator, recorder, headers):
    response = put(emulator, "no-token-1", submit_body(emulator, recorder), headers=headers)
    assert response.status_code == 401 and response.headers["WWW-Authenticate"] == "Bearer"
    data, _ = sample_image("img-00001.png")
    assert check_json(emulator, "no-token-2", data, headers=headers).status_code == 401
    state = emulator.state()
    assert state["scans"] == 0 and state["unauthorized"] == 2


def test_an_expired_token_is_refused_and_a_new_login_works(start_emulator, recorder, monkeypatch):
    import copyleaks_emulator.state as emulator_state

    clock = FakeClock().install(monkeypatch, emulator_state)  # the tokens' clock
    emulator = start_emulator(token_ttl_seconds=300)
    headers = auth(emulator)
    assert put(emulator, "fresh-1", submit_body(emulator, recorder), headers=headers).status_code == 201
    clock.advance(299)
    assert put(emulator, "fresh-2", submit_body(emulator, recorder), headers=headers).status_code == 201
    clock.advance(1)  # the token's 300 s are over
    body = submit_body(emulator, recorder, "img-00002.jpg")
    assert put(emulator, "expired-1", body, headers=headers).status_code == 401
    assert put(emulator, "expired-1", body).status_code == 201  # put() logs in again


# --- async submit -------------------------------------------------------------------------------------
def test_submit_answers_201_then_posts_a_valid_detection(emulator, recorder):
    response = put(emulator, "scan-one", submit_body(emulator, recorder))
    assert response.status_code == 201 and response.json() == {}
    [body] = recorder.wait_for(1)
    parsed = WebhookBody.model_validate(body)
    assert not parsed.is_error and parsed.developer_payload == "payload-1"
    detection = parsed.detection()
    assert detection.scanned_document.scan_id == "scan-one" and detection.model == FULL_MODEL
    assert detection.scanned_document.actual_credits == 1 and detection.scanned_document.creation_time
    assert_detection_matches(detection, sample_image("img-00001.jpg")[0])
    state = emulator.wait_idle()
    assert state["submissions"] == {"scan-one": 1} and state["credits_remaining"] == 999_999
    assert state["scans_completed"] == 1 and state["webhooks_sent"] == state["webhooks_acknowledged"] == 1


def test_without_developer_payload_the_webhook_has_none(emulator, recorder):
    body = submit_body(emulator, recorder)
    del body["developerPayload"]
    assert put(emulator, "no-payload", body).status_code == 201
    [webhook] = recorder.wait_for(1)
    assert "developerPayload" not in webhook and WebhookBody.model_validate(webhook).summary is not None


@pytest.mark.parametrize(
    ("scan_id", "overrides", "message"),
    [
        ("UPPER-case", {}, "scanId"),
        ("ab", {}, "scanId"),
        ("x" * 37, {}, "scanId"),
        ("hash#tag", {}, "scanId"),
        ("scan-v1", {"url": "ftp://x/y.jpg"}, "url"),
        ("scan-v2", {"url": None}, "url"),
        ("scan-v3", {"url": "not a url"}, "url"),
        ("scan-v4", {"fileName": "a.gif"}, "extension"),
        ("scan-v5", {"fileName": None}, "fileName"),
        ("scan-v6", {"fileName": "x" * 252 + ".jpg"}, "255"),
        ("scan-v7", {"model": "gpt-image"}, "model"),
        ("scan-v8", {"model": None}, "model"),
        ("scan-v9", {"maskType": "blur"}, "maskType"),
        ("scan-v10", {"headers": [["only-name"]]}, "headers"),
        ("scan-v11", {"headers": {"a": "b"}}, "headers"),
        ("scan-v12", {"headers": [["a", 1]]}, "headers"),
        ("scan-v13", {"webhooks": {}}, "webhooks"),
        ("scan-v14", {"webhooks": {"url": "mailto:x@y.z"}}, "webhooks"),
        ("scan-v15", {"webhooks": None}, "webhooks"),
        ("scan-v16", {"sandbox": "yes"}, "sandbox"),
        ("scan-v17", {"developerPayload": 42}, "developerPayload"),
    ],
)
def test_submit_validates_like_copyleaks(emulator, recorder, scan_id, overrides, message):
    response = put(emulator, scan_id, submit_body(emulator, recorder, **overrides))
    assert response.status_code == 400 and message in response.json()["message"]
    state = emulator.state()
    assert state["scans"] == 0 and state["bad_requests"] == 1 and state["credits_remaining"] == 1_000_000


@pytest.mark.parametrize("body", [["not", "an", "object"], "text"])
def test_submit_body_must_be_a_json_object(emulator, body):
    assert put(emulator, "scan-obj", body).status_code == 400
    raw = httpx.put(f"{emulator.url}{SUBMIT.format('scan-raw')}", content=b"{", headers=auth(emulator))
    assert raw.status_code == 400 and "JSON" in raw.json()["message"]


def test_model_alias_full_name_heatmap_and_every_async_format_are_accepted(emulator, recorder):
    names = ["img-00002.tiff", "img-00003.jpeg", "img-00004.png", "img-00005.webp", "img-00006.bmp"]
    names += ["img-00007.heic", "img-00008.heif"]
    for i, name in enumerate(names):
        model = "ai-image-1-ultra" if i % 2 else FULL_MODEL
        body = submit_body(emulator, recorder, name, model=model, maskType="heatmap")
        assert put(emulator, f"format-{i}", body).status_code == 201
    bodies = recorder.wait_for(len(names))
    assert len(bodies) == len(names)
    for body in bodies:
        assert body["model"] == FULL_MODEL and WebhookBody.model_validate(body).detection()


def test_scan_ids_may_use_every_allowed_character(emulator, recorder):
    scan_id = """a1!@$^&-+%=_(){}<>';:/.",~|"""
    assert put(emulator, scan_id, submit_body(emulator, recorder)).status_code == 201
    [body] = recorder.wait_for(1)
    assert body["scannedDocument"]["scanId"] == scan_id
    assert emulator.wait_idle()["submissions"] == {scan_id: 1}


def test_reused_scan_id_is_idempotent_for_the_same_image_and_409_for_another(emulator, recorder):
    body = submit_body(emulator, recorder)
    assert put(emulator, "reuse-1", body).status_code == 201
    assert put(emulator, "reuse-1", {**body, "developerPayload": "other"}).status_code == 201
    for change in (
        {"url": emulator.sample_url("img-00009.jpg")},
        {"fileName": "other.jpg"},
        {"model": FULL_MODEL},
    ):
        conflict = put(emulator, "reuse-1", {**body, **change})
        assert conflict.status_code == 409 and "reuse-1" in conflict.json()["message"]
    state = emulator.wait_idle()
    assert state["scans"] == 1 and state["submissions"] == {"reuse-1": 2}
    assert state["duplicate_submissions"] == 1 and state["conflicts"] == 3
    assert state["credits_remaining"] == 999_999 and len(recorder.bodies) == 1


def test_credits_run_out_with_402_and_sandbox_costs_nothing(start_emulator, recorder):
    emulator = start_emulator(credits=1)
    assert put(emulator, "credit-1", submit_body(emulator, recorder)).status_code == 201
    refused = put(emulator, "credit-2", submit_body(emulator, recorder, "img-00003.jpg"))
    assert refused.status_code == 402 and "credits" in refused.json()["message"]
    assert put(emulator, "credit-1", submit_body(emulator, recorder)).status_code == 201  # a repeat is free
    sandbox = put(emulator, "credit-3", submit_body(emulator, recorder, "img-00004.jpg", sandbox=True))
    assert sandbox.status_code == 201
    bodies = {b["scannedDocument"]["scanId"]: b for b in recorder.wait_for(2)}
    mock = WebhookBody.model_validate(bodies["credit-3"]).detection()
    assert mock.scanned_document.actual_credits == 0 and mock.summary.ai == 0.5
    assert_detection_matches(mock, sample_image("img-00004.jpg")[0])
    state = emulator.wait_idle()
    assert state["credits_remaining"] == 0 and state["no_credits"] == 1 and state["scans"] == 2


def test_sandbox_results_are_the_same_mock_for_every_image(emulator, recorder):
    for i in range(3):
        body = submit_body(emulator, recorder, f"img-{i + 40:05d}.jpg", sandbox=True)
        assert put(emulator, f"mock-{i}", body).status_code == 201
    summaries = {b["summary"]["ai"] for b in recorder.wait_for(3)}
    assert len(recorder.bodies) == 3 and summaries == {0.5}
    assert emulator.wait_idle()["credits_remaining"] == 1_000_000


@pytest.mark.parametrize(
    ("variant", "name", "expected", "error"),
    [
        ("tiny", "t.png", "512x512", (8, "image_quality_too_low", "invalid_request_error")),
        ("corrupt", "c.jpg", "decoded", (14, "invalid_file", "invalid_request_error")),
        ("missing", "m.jpg", "404", (5, "download_failed", "api_error")),
    ],
)
def test_unscannable_images_produce_the_documented_error_webhook_and_cost_nothing(
    emulator, recorder, variant, name, expected, error
):
    """Copyleaks' documented error webhook (no scannedDocument), and the scan's credit refunded."""
    body = submit_body(emulator, recorder, url=emulator.sample_url(name, variant), fileName=name)
    assert put(emulator, f"err-{variant}", body).status_code == 201
    [webhook] = recorder.wait_for(1)
    assert set(webhook) == {"status", "error", "developerPayload"} and webhook["status"] == 1
    assert set(webhook["error"]) == {"type", "id", "code", "message"}
    assert (webhook["error"]["code"], webhook["error"]["id"], webhook["error"]["type"]) == error
    parsed = WebhookBody.model_validate(webhook)
    assert parsed.is_error and expected in parsed.error.message and parsed.scanned_document is None
    assert parsed.developer_payload == "payload-1"
    assert parsed.failure_reason().startswith(f"Copyleaks error {error[1]} (code {error[0]}): ")
    state = emulator.wait_idle()
    assert state["scans_failed"] == 1 and state["webhooks_acknowledged"] == 1
    assert state["credits_remaining"] == 1_000_000, "a failed scan is refunded"


def test_failed_scans_are_refunded_and_completed_ones_charged(start_emulator, recorder):
    """With one credit: a failed scan gives its credit back, so the next scan can still be paid."""
    emulator = start_emulator(credits=1)
    headers = auth(emulator)
    tiny = submit_body(emulator, recorder, url=emulator.sample_url("t.png", "tiny"), fileName="t.png")
    assert put(emulator, "refund-1", tiny, headers).status_code == 201
    assert emulator.wait_idle()["credits_remaining"] == 1
    sandbox = submit_body(emulator, recorder, url=emulator.sample_url("t2.png", "tiny"), sandbox=True)
    assert put(emulator, "refund-sandbox", {**sandbox, "fileName": "t2.png"}, headers).status_code == 201
    assert emulator.wait_idle()["credits_remaining"] == 1, "a failed sandbox scan was never charged"
    assert put(emulator, "refund-2", submit_body(emulator, recorder), headers).status_code == 201
    state = emulator.wait_idle()
    assert state["credits_remaining"] == 0 and state["scans_failed"] == 2 and state["scans_completed"] == 1
    assert (
        put(emulator, "refund-3", submit_body(emulator, recorder, "img-00002.jpg"), headers).status_code
        == 402
    )
    assert {b.get("status") for b in recorder.wait_for(3)} == {1, None}


def _flat_png(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (width, height), 128).save(buffer, format="PNG")
    return buffer.getvalue()


#: The largest image Copyleaks takes (6000x4500 = 27 megapixels) and the smallest step past it.
LARGEST, TOO_LARGE = (6000, 4500), (6000, 4501)


def test_an_image_of_27_megapixels_is_scanned_and_a_larger_one_refused_async(emulator, recorder):
    headers = auth(emulator)
    with _DroppingImageServer(drops=0) as server:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        for scan_id, size in (("px-27mp", LARGEST), ("px-over", TOO_LARGE)):
            server.body = _flat_png(*size)
            body = submit_body(emulator, recorder, url=server.url, fileName="big.png")
            assert put(emulator, scan_id, body, headers).status_code == 201
            emulator.wait_idle()  # one image at a time: the server serves the current body
        server.shutdown()
    largest, larger = recorder.wait_for(2)
    scanned = WebhookBody.model_validate(largest).detection()
    assert (scanned.image_info.shape.width, scanned.image_info.shape.height) == LARGEST
    assert larger["error"]["id"] == "file_too_large" and "27 megapixels" in larger["error"]["message"]
    assert emulator.state()["credits_remaining"] == 999_999  # the refused one refunded


def test_an_image_of_27_megapixels_is_checked_and_a_larger_one_refused_sync(emulator):
    headers = auth(emulator)
    largest = check_json(emulator, "sync-27mp", _flat_png(*LARGEST), headers)
    assert largest.status_code == 200, largest.text
    assert largest.json()["imageInfo"]["shape"] == {"width": 6000, "height": 4500}
    portrait = check_json(emulator, "sync-27mp-tall", _flat_png(4500, 6000), headers)
    assert portrait.status_code == 200, portrait.text  # the limit is on pixels, not orientation
    refused = check_json(emulator, "sync-over", _flat_png(*TOO_LARGE), headers)
    assert refused.status_code == 400 and "27 megapixels" in refused.json()["message"]
    assert emulator.state()["credits_remaining"] == 999_998  # the refused check is not charged


@pytest.mark.parametrize(
    ("route", "expected"),
    [
        ("html", "decoded"),
        ("oversized", "32 MB"),
        ("oversized-declared", "32 MB"),
        ("closed-port", "fetched"),
    ],
)
def test_unfetchable_images_produce_the_error_webhook(emulator, recorder, route, expected):
    urls = {
        "closed-port": f"http://127.0.0.1:{free_port()}/x.jpg",
        "oversized-declared": recorder.image_url("oversized", "big.png") + "?declared=1",
    }
    url = urls.get(route) or recorder.image_url(route, "x.png")
    assert put(emulator, f"unfetchable-{route}", submit_body(emulator, recorder, url=url)).status_code == 201
    [webhook] = recorder.wait_for(1)
    assert expected in WebhookBody.model_validate(webhook).error.message
    error_id = "file_too_large" if route.startswith("oversized") else "download_failed"
    if route == "html":
        error_id = "invalid_file"
    assert webhook["error"]["id"] == error_id and "scannedDocument" not in webhook


class _DroppingImageServer(socketserver.ThreadingTCPServer):
    """Serves one PNG over plain HTTP/1.1, but closes its first ``drops`` connections without an answer:
    what a fetcher sees when it reuses a keep-alive connection the server has just closed."""

    daemon_threads = True

    def __init__(self, drops: int):
        self.drops, self.requests = drops, 0
        self.body = sample_image("img-00001.png")[0]
        super().__init__(("127.0.0.1", 0), _DroppingHandler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/img-00001.png"


class _DroppingHandler(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        while self.rfile.readline() not in (b"\r\n", b""):
            pass  # the request head
        self.server.requests += 1
        if self.server.requests <= self.server.drops:
            return  # closed without a byte
        head = f"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nContent-Length: {len(self.server.body)}\r\n"
        self.wfile.write(f"{head}Connection: close\r\n\r\n".encode() + self.server.body)


@pytest.mark.parametrize(("drops", "fetches", "fetched"), [(1, 2, True), (2, 3, True), (5, 3, False)])
def test_a_dropped_connection_is_fetched_again_before_the_image_fails(
    emulator, recorder, drops, fetches, fetched
):
    with _DroppingImageServer(drops) as server:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        body = submit_body(emulator, recorder, url=server.url, fileName="img-00001.png")
        assert put(emulator, f"dropped-{drops}", body).status_code == 201
        [webhook] = recorder.wait_for(1)
        server.shutdown()
    result = WebhookBody.model_validate(webhook)
    assert server.requests == fetches
    if fetched:
        assert result.error is None and result.summary is not None
    else:
        assert "could not be fetched (RemoteProtocolError)" in result.error.message


def test_custom_headers_are_sent_when_fetching(emulator, recorder):
    url = recorder.image_url("private")
    headers = [["Authorization", "Bearer bucket-token"], ["X-Tenant", "acme"]]
    assert (
        put(emulator, "private-1", submit_body(emulator, recorder, url=url, headers=headers)).status_code
        == 201
    )
    assert put(emulator, "private-2", submit_body(emulator, recorder, url=url)).status_code == 201
    bodies = {b.get("scannedDocument", {}).get("scanId", "failed"): b for b in recorder.wait_for(2)}
    assert "error" not in bodies["private-1"] and "403" in bodies["failed"]["error"]["message"]
    with_headers = next(h for h in recorder.fetch_headers if "authorization" in h)
    assert with_headers["x-tenant"] == "acme"


def test_redirects_are_followed_when_fetching(emulator, recorder):
    assert (
        put(
            emulator, "redirected", submit_body(emulator, recorder, url=recorder.image_url("redirect"))
        ).status_code
        == 201
    )
    [webhook] = recorder.wait_for(1)
    assert_detection_matches(
        WebhookBody.model_validate(webhook).detection(), sample_image("img-00005.jpg")[0]
    )


def test_results_are_deterministic_per_content_and_spread_realistically(emulator, recorder):
    emulator.reset(api_requests_per_second=0)  # about results, not budgets: 61 submissions at once
    headers = auth(emulator)
    names = [f"img-{i:05d}.jpg" for i in range(60)]
    for i, name in enumerate(names):
        body = submit_body(emulator, recorder, name)
        assert put(emulator, f"spread-{i}", body, headers=headers).status_code == 201
    same_bytes_elsewhere = submit_body(emulator, recorder, url=recorder.image_url("plain", names[0]))
    assert put(emulator, "spread-again", same_bytes_elsewhere, headers=headers).status_code == 201
    bodies = {b["scannedDocument"]["scanId"]: b for b in recorder.wait_for(61)}
    assert len(bodies) == 61
    assert bodies["spread-0"]["summary"] == bodies["spread-again"]["summary"]
    assert bodies["spread-0"]["result"] == bodies["spread-again"]["result"]
    kinds = Counter(
        "human" if b["summary"]["ai"] == 0 else "ai" if b["summary"]["ai"] == 1 else "partly"
        for b in bodies.values()
    )
    assert kinds["human"] > kinds["ai"] > 0 and kinds["partly"] > 0
    for i, name in enumerate(names[:12]):
        assert_detection_matches(
            WebhookBody.model_validate(bodies[f"spread-{i}"]).detection(), sample_image(name)[0]
        )
    with_metadata = [b["imageInfo"]["metadata"] for b in bodies.values() if b["imageInfo"]["metadata"]]
    assert with_metadata and all(
        set(m) == {"issuedTime", "issuedBy", "appOrDeviceUsed"} for m in with_metadata
    )


# --- sync check ---------------------------------------------------------------------------------------
def test_sync_check_json_and_multipart_give_the_same_valid_answer(emulator):
    data, _ = sample_image("img-00007.png")
    as_json, as_form = check_json(emulator, "sync-1", data), check_form(emulator, "sync-2", data)
    assert as_json.status_code == as_form.status_code == 200
    first, second = (
        DetectionResponse.model_validate(as_json.json()),
        DetectionResponse.model_validate(as_form.json()),
    )
    assert first.summary == second.summary and first.result == second.result and first.model == FULL_MODEL
    assert first.scanned_document.scan_id == "sync-1" and second.scanned_document.scan_id == "sync-2"
    assert_detection_matches(first, data)
    state = emulator.state()
    assert state["credits_remaining"] == 999_998 and state["checks"] == 2 and state["scans"] == 0


def test_sync_check_reads_heic_and_exif(emulator):
    heic, _ = sample_image("img-00011.heic")
    response = check_form(emulator, "sync-heic", heic, filename="photo.heic")
    assert response.status_code == 200
    assert_detection_matches(DetectionResponse.model_validate(response.json()), heic)
    tagged = next(
        data for data in (sample_image(f"img-{i:05d}.jpg")[0] for i in range(100)) if b"Exif" in data[:64]
    )
    with_exif = check_json(emulator, "sync-exif", tagged, filename="x.jpg").json()
    assert with_exif["imageInfo"]["metadata"]["appOrDeviceUsed"]


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"base64": "!!!"}, "base64"),
        ({"base64": ""}, "base64"),
        ({"filename": None}, "filename"),
        ({"filename": "a.tiff"}, "extension"),  # the sync check does not take TIFF
        ({"filename": "a" * 256 + ".png"}, "255"),
        ({"model": "ai-image-2"}, "model"),
        ({"sandbox": "no"}, "sandbox"),
    ],
)
def test_sync_check_json_validates_like_copyleaks(emulator, fields, message):
    data, _ = sample_image("img-00007.png")
    response = check_json(emulator, "sync-bad", data, **fields)
    assert response.status_code == 400 and message in response.json()["message"]
    assert emulator.state()["credits_remaining"] == 1_000_000


@pytest.mark.parametrize(
    ("data", "fields", "message"),
    [
        (None, {}, "image"),
        (sample_image("img-00007.png")[0], {"model": ""}, "model"),
        (sample_image("img-00007.png")[0], {"filename": "a.svg"}, "extension"),
        (sample_image("img-00007.png")[0], {"sandbox": "maybe"}, "sandbox"),
        (sample_image("t.png", "tiny")[0], {}, "512x512"),
        (sample_image("c.png", "corrupt")[0], {}, "decoded"),
        (_flat_png(*TOO_LARGE), {}, "27 megapixels"),
        (bytes(32 * 1024 * 1024), {}, "32 MB"),
    ],
    ids=["no-image", "model", "extension", "sandbox", "tiny", "corrupt", "over-27mp", "32mb"],
)
def test_sync_check_multipart_validates_like_copyleaks(emulator, data, fields, message):
    response = check_form(emulator, "sync-bad", data, **fields)
    assert response.status_code == 400 and message in response.json()["message"]
    assert emulator.state()["credits_remaining"] == 1_000_000


def test_sync_check_scan_id_rule_and_credits(start_emulator):
    emulator = start_emulator(credits=1)
    data, _ = sample_image("img-00007.png")
    assert check_json(emulator, "BAD", data).status_code == 400
    assert check_json(emulator, "sync-paid", data).status_code == 200
    refused = check_json(emulator, "sync-broke", data)
    assert refused.status_code == 402
    mock = check_json(emulator, "sync-sandbox", data, sandbox=True)
    assert mock.status_code == 200 and mock.json()["summary"] == {"human": 0.5, "ai": 0.5}
    assert mock.json()["scannedDocument"]["actualCredits"] == 0
    assert emulator.state()["credits_remaining"] == 0


# --- admin --------------------------------------------------------------------------------------------
def test_state_reports_every_counter(emulator):
    state = emulator.state()
    expected = {"submissions", "scans", "credits_remaining", "queue_depth", "in_flight", "scanning", "logins"}
    expected.add("faults")
    expected |= {f"webhooks_{what}" for what in ("sent", "acknowledged", "failed", "dropped", "duplicated")}
    assert expected <= set(state)
    assert state["faults"]["webhook_max_tries"] == 5 and state["faults"]["reorder"] is False


def test_faults_change_at_runtime_all_or_nothing(emulator):
    assert emulator.set_faults(p_429=0.25, reorder_webhooks=True)["reorder"] is True
    assert emulator.state()["faults"]["p_429"] == 0.25
    for bad in ({"p_explode": 1}, {"p_429": 2}, {"p_5xx": 0.5, "webhook_max_tries": 0}, {"credits": 5}):
        response = httpx.patch(f"{emulator.url}/admin/faults", json=bad)
        assert response.status_code == 400 and response.json()["message"]
    assert httpx.patch(f"{emulator.url}/admin/faults", json=[1]).status_code == 400
    faults = emulator.state()["faults"]
    assert faults["p_5xx"] == 0 and faults["webhook_max_tries"] == 5 and faults["p_429"] == 0.25


def test_reset_drops_pending_work_clears_counters_and_can_change_settings(emulator, recorder):
    emulator.set_faults(webhook_latency_ms=5_000)
    assert put(emulator, "before-reset", submit_body(emulator, recorder)).status_code == 201
    wait_for(lambda: emulator.state()["in_flight"], "the scan in flight", timeout=10, interval=0.01)
    state = emulator.reset(credits=3)
    assert state["in_flight"] == state["queue_depth"] == state["scans"] == 0 and state["submissions"] == {}
    assert state["credits_remaining"] == 3 and state["faults"]["webhook_latency_ms"] == 5_000
    assert httpx.post(f"{emulator.url}/admin/reset").status_code == 200  # no body: settings kept
    assert httpx.post(f"{emulator.url}/admin/reset", json={"workers": 0}).status_code == 400
    emulator.set_faults(webhook_latency_ms=0)
    assert put(emulator, "before-reset", submit_body(emulator, recorder, "img-00002.jpg")).status_code == 201
    assert [b["scannedDocument"]["scanId"] for b in recorder.wait_for(1)] == ["before-reset"]
    assert emulator.wait_idle()["credits_remaining"] == 2


def test_health(emulator):
    assert httpx.get(f"{emulator.url}/health").json() == {"status": "ok"}


# --- sample images ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("ext", "image_format", "media_type"),
    [
        ("jpg", "JPEG", "image/jpeg"),
        ("jpeg", "JPEG", "image/jpeg"),
        ("png", "PNG", "image/png"),
        ("webp", "WEBP", "image/webp"),
        ("bmp", "BMP", "image/bmp"),
        ("tiff", "TIFF", "image/tiff"),
        ("heic", "HEIF", "image/heic"),
    ],
)
def test_samples_are_deterministic_images_of_the_named_format(emulator, ext, image_format, media_type):
    first = httpx.get(emulator.sample_url(f"img-00042.{ext}"))
    assert first.status_code == 200 and first.headers["content-type"] == media_type
    assert httpx.get(emulator.sample_url(f"img-00042.{ext}")).content == first.content
    assert httpx.get(emulator.sample_url(f"img-00043.{ext}")).content != first.content
    with Image.open(io.BytesIO(first.content)) as image:
        assert image.format == image_format and min(image.size) >= 512
        image.load()


def test_sample_variants_serve_bad_data(emulator):
    with Image.open(io.BytesIO(httpx.get(emulator.sample_url("a.png", "tiny")).content)) as tiny:
        assert max(tiny.size) < 512
    corrupt = httpx.get(emulator.sample_url("a.jpg", "corrupt"))
    assert corrupt.status_code == 200
    with pytest.raises(OSError), Image.open(io.BytesIO(corrupt.content)) as image:
        image.load()
    huge = httpx.get(emulator.sample_url("a.png", "huge"))
    with Image.open(io.BytesIO(huge.content)) as image:
        assert image.width * image.height > 27_000_000 and len(huge.content) < 2_000_000
    assert httpx.get(emulator.sample_url("a.jpg", "missing")).status_code == 404
    assert httpx.get(emulator.sample_url("a.jpg", "weird")).status_code == 404
    assert httpx.get(emulator.sample_url("a.gif")).status_code == 404
    assert httpx.head(emulator.sample_url("a.jpg")).status_code == 200


def test_samples_carry_exif_for_some_names():
    tagged = 0
    for i in range(30):
        with Image.open(io.BytesIO(sample_image(f"img-{i:05d}.jpg")[0])) as image:
            tagged += bool(image.getexif().get(0x0131))
    assert 0 < tagged < 30


# --- command line ---------------------------------------------------------------------------------------
def test_flags_map_to_settings():
    args = build_parser().parse_args(
        ["--port", "9000", "--credits", "5", "--p-429", "0.1", "--reorder", "--account", "a@b.dev:key-1",
         "--webhook-retry-base-seconds", "0.5"]
    )  # fmt: skip
    settings = settings_from_args(args)
    assert (args.port, settings.credits, settings.p_429, settings.reorder) == (9000, 5, 0.1, True)
    assert settings.accounts == {"a@b.dev": "key-1"} and settings.webhook_retry_base_seconds == 0.5
    assert settings_from_args(build_parser().parse_args([])).credits == 1_000_000
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--account", "no-colon"])


def test_python_dash_m_starts_a_server():
    port = free_port()
    command = [sys.executable, "-m", "copyleaks_emulator", "--port", str(port), "--credits", "7"]
    with server_process(command, port=port, timeout=30) as base:
        state = httpx.get(f"{base}/admin/state").json()
    assert state["credits_remaining"] == 7
