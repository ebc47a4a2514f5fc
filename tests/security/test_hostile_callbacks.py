"""Hostile callbacks against the receiver as deployed at a public edge: ``python -m image_audit.webhook``,
its secrets and settings read from the Copyleaks connection, storing into a real warehouse.

Whatever an authentic callback holds, it is kept and answered 200 (never a 5xx or 4xx that Copyleaks would
retry, then drop); with ``require_callback_payload``, a callback URL alone is not enough to post a result.
"""

from __future__ import annotations

import base64
import contextlib
import json
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from sqlalchemy import select

from copyleaks_provider.hooks.copyleaks import CopyleaksHook
from copyleaks_provider.webhooks.auth import callback_payload, webhook_url
from image_audit.warehouse.engine import get_engine
from image_audit.warehouse.schema import audit_failed_callbacks, audit_results
from image_audit_dev.servers import free_port, server_process
from tests.support.emulator import copyleaks_connection
from tests.support.factories import result_body, seed_scan, with_value
from tests.support.polling import wait_for
from tests.support.warehouse import scan_row

pytestmark = pytest.mark.slow

SECRET = "edge-webhook-secret"


def _hostile_bodies(scan_id: str) -> dict[str, bytes]:
    """Authentic callbacks no Copyleaks answer holds, one per way of not fitting the warehouse."""
    good = result_body(scan_id)
    as_json = {
        "shape-over-27-mp": with_value(good, "imageInfo.shape", {"height": 45_000, "width": 60_000}),
        "run-of-2.7-billion": with_value(good, "result", {"starts": [0], "lengths": [2_700_000_000]}),
        "width-past-int64": with_value(good, "imageInfo.shape.width", 2**70),
        "credits-past-int32": with_value(good, "scannedDocument.actualCredits", 2**31),
        "nul-in-model": with_value(good, "model", "ai\x00"),
        "nul-in-metadata": with_value(good, "imageInfo.metadata.appOrDeviceUsed", "cam\x00"),
        "nul-in-error": {"status": 1, "error": {"code": 5, "message": "down\x00load"}},
        "surrogate-in-metadata": with_value(good, "imageInfo.metadata.issuedBy", "\ud800"),
        "model-past-its-column": with_value(good, "model", "m" * 300),
    }
    raw = {name: json.dumps(body).encode() for name, body in as_json.items()}
    text = json.dumps(good)
    return raw | {
        "float-overflow": text.replace('"ai": 0.25', '"ai": 1e400').encode(),
        "nan": text.replace('"ai": 0.25', '"ai": NaN').encode(),
        "not-json": b"<html>502 Bad Gateway</html>",
        "not-utf8": b'{"model": "\xff\xfe"}',
        "nested-10000": b"[" * 10_000 + b"]" * 10_000,
        "integer-of-5000-digits": b'{"n": ' + b"7" * 5000 + b"}",
    }


@contextlib.contextmanager
def _edge_receiver(emulator, log_path, monkeypatch, **connection_extra) -> Iterator[str]:
    """The receiver process, reading the Copyleaks connection (``connection_extra`` added) and the
    warehouse connection from the environment, as at a public edge."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    connection = copyleaks_connection(emulator, base, SECRET, **connection_extra)
    monkeypatch.setenv("AIRFLOW_CONN_COPYLEAKS_DEFAULT", connection)
    command = [sys.executable, "-m", "image_audit.webhook", "--port", str(port)]
    with server_process(command, port=port, log_path=log_path) as url:
        yield url


@pytest.fixture
def edge_receiver(warehouse_url, emulator, tmp_path, monkeypatch) -> Iterator[str]:
    """The receiver as configured by default."""
    with _edge_receiver(emulator, tmp_path / "receiver.log", monkeypatch) as url:
        yield url


@pytest.fixture
def payload_checking_receiver(warehouse_url, emulator, tmp_path, monkeypatch) -> Iterator[str]:
    """The receiver of a connection with ``require_callback_payload``."""
    log_path = tmp_path / "receiver.log"
    with _edge_receiver(emulator, log_path, monkeypatch, require_callback_payload=True) as url:
        yield url


def _post(base: str, scan_id: str, content: bytes) -> httpx.Response:
    url = webhook_url(base, SECRET, scan_id)
    return httpx.post(url, content=content, headers={"content-type": "application/json"}, timeout=60)


def test_every_hostile_authentic_callback_is_kept_and_answered_200(edge_receiver, warehouse_url):
    """Sent all at once, so the hostile ones share group commits with a good one: each is kept (verbatim,
    or as its bytes), fails its scan with a reason, and the good result beside them is stored."""
    scan_ids = {name: f"hostile-{i}" for i, name in enumerate(_hostile_bodies("x"))}
    bodies = {name: _hostile_bodies(scan_id)[name] for name, scan_id in scan_ids.items()}
    for scan_id in [*scan_ids.values(), "hostile-good"]:
        seed_scan(warehouse_url, scan_id)
    good = json.dumps(result_body("hostile-good")).encode()
    with ThreadPoolExecutor(8) as pool:
        answers = dict(
            zip(
                [*bodies, "good"],
                pool.map(
                    lambda item: _post(edge_receiver, *item),
                    [*[(scan_ids[n], b) for n, b in bodies.items()], ("hostile-good", good)],
                ),
                strict=True,
            )
        )
    statuses = {name: (answer.status_code, answer.json().get("status")) for name, answer in answers.items()}
    expected = dict.fromkeys(bodies, (200, "unrecognised_recorded")) | {"good": (200, "stored")}
    assert statuses == expected, {n: a.text[:200] for n, a in answers.items() if a.status_code != 200}
    with get_engine(warehouse_url).connect() as conn:
        kept = {row.scan_id: row for row in conn.execute(select(audit_failed_callbacks))}
        stored = set(conn.execute(select(audit_results.c.scan_id)).scalars())
    assert stored == {"hostile-good"}
    for name, scan_id in scan_ids.items():
        row = scan_row(warehouse_url, scan_id)
        assert row["state"] == "failed" and row["last_error"], name
        if kept[scan_id].kind == "unreadable":
            assert base64.b64decode(kept[scan_id].raw_body["base64"]) == bodies[name], name
        else:
            assert kept[scan_id].raw_body == json.loads(bodies[name]), name
    assert httpx.get(f"{edge_receiver}/health").status_code == 200


def test_with_the_payload_required_a_leaked_callback_url_cannot_post_a_result(
    payload_checking_receiver, warehouse_url, emulator
):
    """Forged with the URL alone (no payload, another scan's, a guessed one): 403, nothing written. Then
    a real submission through the hook: the emulator echoes the payload and its result is stored."""
    seed_scan(warehouse_url, "bound-1")
    forged = result_body("bound-1")
    for payload in (None, callback_payload(SECRET, "bound-2"), "ia-callback.v1." + "0" * 64):
        body = forged if payload is None else {**forged, "developerPayload": payload}
        answer = _post(payload_checking_receiver, "bound-1", json.dumps(body).encode())
        assert answer.status_code == 403 and "developerPayload" in answer.text
    assert _post(payload_checking_receiver, "bound-1", b"not json").status_code == 403
    assert scan_row(warehouse_url, "bound-1")["state"] == "submitted"

    hook = CopyleaksHook()  # the connection the receiver reads too
    url = emulator.sample_url("img-00001.jpg")
    hook.submit_image(hook.build_submit_request("bound-1", url, "img-00001.jpg"))
    wait_for(lambda: scan_row(warehouse_url, "bound-1")["state"] == "completed", "the echoed result stored")
    with get_engine(warehouse_url).connect() as conn:
        stored = conn.execute(select(audit_results)).mappings().one()
    assert stored["developer_payload"] == callback_payload(SECRET, "bound-1")  # the emulator's echo
    assert stored["width"] != forged["imageInfo"]["shape"]["width"]  # its result, not the forger's
