"""The provider's receiver and where its webhook secrets come from: the Airflow connection read outside
any task, re-read so a rotation is picked up without a restart, never logged. Callbacks go to the
provider's in-memory sink: no pipeline, no warehouse (the audit's receiver: tests/test_webhook.py)."""

from __future__ import annotations

import json
import logging

import httpx

import copyleaks_provider.webhooks.receiver as receiver_module
from copyleaks_provider.webhooks.auth import webhook_url
from copyleaks_provider.webhooks.callbacks import InMemoryCallbackSink
from copyleaks_provider.webhooks.receiver import create_receiver_app
from image_audit_dev.servers import BackgroundServer
from tests.support.factories import result_body


def set_connection(monkeypatch, secret: str | None, previous: list[str] | None = None) -> None:
    extra = {"webhook_secret": secret, "previous_webhook_secrets": previous or []}
    connection = {"conn_type": "copyleaks", "login": "a@b.c", "password": "api-key", "extra": extra}
    monkeypatch.setenv("AIRFLOW_CONN_COPYLEAKS_DEFAULT", json.dumps(connection))


def post(server: BackgroundServer, secret: str, scan_id: str) -> int:
    return httpx.post(
        webhook_url(server.url, secret, scan_id), json=result_body(scan_id), timeout=30
    ).status_code


def test_a_rotated_connection_secret_is_picked_up_by_a_running_receiver(monkeypatch):
    sink = InMemoryCallbackSink(known_scans={"rot-1", "rot-2", "rot-3", "rot-4"})
    set_connection(monkeypatch, "secret-a")
    app = create_receiver_app(sink, secrets_ttl_seconds=0)
    with BackgroundServer(app) as server:
        assert post(server, "secret-a", "rot-1") == 200
        set_connection(monkeypatch, "secret-b", ["secret-a"])  # rotated, old one in its grace period
        assert post(server, "secret-a", "rot-2") == 200
        assert post(server, "secret-b", "rot-3") == 200
        set_connection(monkeypatch, "secret-b")  # grace period over
        assert post(server, "secret-a", "rot-4") == 403
    assert sorted(sink.results) == ["rot-1", "rot-2", "rot-3"] and not sink.failures


def test_no_webhook_secret_configured_is_503_so_copyleaks_retries(monkeypatch):
    monkeypatch.setattr(receiver_module, "SECRETS_RETRY_SECONDS", 0.0)
    sink = InMemoryCallbackSink(known_scans={"unconfigured"})
    monkeypatch.delenv("AIRFLOW_CONN_COPYLEAKS_DEFAULT", raising=False)
    app = create_receiver_app(sink, secrets_ttl_seconds=0)
    with BackgroundServer(app) as server:
        assert post(server, "secret-a", "unconfigured") == 503  # no connection at all
        set_connection(monkeypatch, None)
        assert post(server, "secret-a", "unconfigured") == 503  # a connection without webhook_secret
        set_connection(monkeypatch, "secret-a")
        assert post(server, "secret-a", "unconfigured") == 200
    assert list(sink.results) == ["unconfigured"]


def test_a_failed_reread_keeps_the_last_secrets_and_never_logs_them(caplog):
    sink = InMemoryCallbackSink(known_scans={"flaky-1", "flaky-2"})
    reads = []

    def flaky_source() -> list[str]:
        reads.append("read")
        if len(reads) > 1:
            raise ValueError("metadata database down; it held secret-a")  # text must not reach the log
        return ["secret-a"]

    caplog.set_level(logging.INFO, logger=receiver_module.__name__)
    app = create_receiver_app(sink, webhook_secrets=flaky_source, secrets_ttl_seconds=0)
    with BackgroundServer(app) as server:
        assert post(server, "secret-a", "flaky-1") == 200
        assert post(server, "secret-a", "flaky-2") == 200  # the re-read failed: the last secrets stay
        assert post(server, "forged", "flaky-2") == 403
    assert len(reads) == 2, "a failed read is not retried on every request"
    assert sorted(sink.results) == ["flaky-1", "flaky-2"]
    # The test's own httpx client logs the URLs it posts to, as Copyleaks' side would; only the
    # receiver's side (our loggers, uvicorn's) must keep the secret and the tokens out.
    server_side = "\n".join(
        record.getMessage() for record in caplog.records if not record.name.startswith(("httpx", "httpcore"))
    )
    assert "keeping the ones read before" in server_side
    assert "secret-a" not in server_side and "metadata database down" not in server_side
    token = webhook_url("", "secret-a", "flaky-1").rsplit("/", 1)[1]
    assert token not in server_side
