"""Where the receiver's webhook secrets come from: the Airflow connection read outside any task, re-read
so a rotation is picked up without a restart, never logged; and the receiver run alone as a module."""

from __future__ import annotations

import json
import logging
import os
import sys
import time

import httpx
import pytest

import copyleaks_provider.webhooks.receiver as receiver_module
from copyleaks_provider.webhooks.auth import webhook_url
from image_audit.webhook import create_warehouse_receiver_app
from image_audit_dev.servers import BackgroundServer, free_port, server_process
from tests.test_receiver import result_body, scan_row, seed_scan


def set_connection(monkeypatch, secret: str | None, previous: list[str] | None = None) -> None:
    extra = {"webhook_secret": secret, "previous_webhook_secrets": previous or []}
    connection = {"conn_type": "copyleaks", "login": "a@b.c", "password": "api-key", "extra": extra}
    monkeypatch.setenv("AIRFLOW_CONN_COPYLEAKS_DEFAULT", json.dumps(connection))


def post(server: BackgroundServer, secret: str, scan_id: str) -> int:
    return httpx.post(
        webhook_url(server.url, secret, scan_id), json=result_body(scan_id), timeout=30
    ).status_code


def test_a_rotated_connection_secret_is_picked_up_by_a_running_receiver(sqlite_warehouse_url, monkeypatch):
    for scan_id in ("rot-1", "rot-2", "rot-3", "rot-4"):
        seed_scan(sqlite_warehouse_url, scan_id)
    set_connection(monkeypatch, "secret-a")
    app = create_warehouse_receiver_app(warehouse_url=sqlite_warehouse_url, secrets_ttl_seconds=0)
    with BackgroundServer(app) as server:
        assert post(server, "secret-a", "rot-1") == 200
        set_connection(monkeypatch, "secret-b", ["secret-a"])  # rotated, old one in its grace period
        assert post(server, "secret-a", "rot-2") == 200
        assert post(server, "secret-b", "rot-3") == 200
        set_connection(monkeypatch, "secret-b")  # grace period over
        assert post(server, "secret-a", "rot-4") == 403
        assert scan_row(sqlite_warehouse_url, "rot-4")["state"] == "submitted"


def test_no_webhook_secret_configured_is_503_so_copyleaks_retries(sqlite_warehouse_url, monkeypatch):
    monkeypatch.setattr(receiver_module, "SECRETS_RETRY_SECONDS", 0.0)
    seed_scan(sqlite_warehouse_url, "unconfigured")
    monkeypatch.delenv("AIRFLOW_CONN_COPYLEAKS_DEFAULT", raising=False)
    app = create_warehouse_receiver_app(warehouse_url=sqlite_warehouse_url, secrets_ttl_seconds=0)
    with BackgroundServer(app) as server:
        assert post(server, "secret-a", "unconfigured") == 503  # no connection at all
        set_connection(monkeypatch, None)
        assert post(server, "secret-a", "unconfigured") == 503  # a connection without webhook_secret
        set_connection(monkeypatch, "secret-a")
        assert post(server, "secret-a", "unconfigured") == 200


def test_a_failed_reread_keeps_the_last_secrets_and_never_logs_them(sqlite_warehouse_url, caplog):
    seed_scan(sqlite_warehouse_url, "flaky-1")
    seed_scan(sqlite_warehouse_url, "flaky-2")
    reads = []

    def flaky_source() -> list[str]:
        reads.append(time.monotonic())
        if len(reads) > 1:
            raise ValueError("metadata database down; it held secret-a")  # text must not reach the log
        return ["secret-a"]

    caplog.set_level(logging.INFO, logger="image_audit.webhook")
    app = create_warehouse_receiver_app(
        warehouse_url=sqlite_warehouse_url, webhook_secrets=flaky_source, secrets_ttl_seconds=0
    )
    with BackgroundServer(app) as server:
        assert post(server, "secret-a", "flaky-1") == 200
        assert post(server, "secret-a", "flaky-2") == 200  # the re-read failed: the last secrets stay
        assert post(server, "forged", "flaky-2") == 403
    assert len(reads) == 2, "a failed read is not retried on every request"
    # The test's own httpx client logs the URLs it posts to, as Copyleaks' side would; only the
    # receiver's side (our loggers, uvicorn's) must keep the secret and the tokens out.
    server_side = "\n".join(
        record.getMessage() for record in caplog.records if not record.name.startswith(("httpx", "httpcore"))
    )
    assert "keeping the ones read before" in server_side
    assert "secret-a" not in server_side and "metadata database down" not in server_side
    token = webhook_url("", "secret-a", "flaky-1").rsplit("/", 1)[1]
    assert token not in server_side


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
