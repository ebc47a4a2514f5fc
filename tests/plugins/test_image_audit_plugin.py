"""The receiver served by the real Airflow api-server through the ``image_audit`` plugin, with the Copyleaks
connection from the environment and from the Airflow metadata database (as created in the UI)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from copyleaks_provider.webhooks.auth import webhook_token, webhook_url
from image_audit_dev.servers import free_port, server_process
from tests.support.api_server import CONNECTION, PLUGIN_FILE, SECRET
from tests.support.factories import result_body, seed_scan
from tests.support.warehouse import scan_row


def test_the_plugin_mounts_the_receiver_without_touching_the_database_at_import(monkeypatch, tmp_path):
    """Every Airflow component imports the plugin: no connection or database may be needed for it."""
    monkeypatch.setenv("AIRFLOW_CONN_IMAGE_AUDIT_WAREHOUSE", f"sqlite:///{tmp_path}/missing/dir/w.db")
    monkeypatch.delenv("AIRFLOW_CONN_COPYLEAKS_DEFAULT", raising=False)
    spec = importlib.util.spec_from_file_location("copyleaks_plugin_under_test", PLUGIN_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    plugin = module.ImageAuditPlugin
    mounts = {mount["url_prefix"]: mount for mount in plugin.fastapi_apps}
    assert plugin.name == "image_audit" and set(mounts) == {"/copyleaks-webhook", "/image-audit"}
    mount = mounts["/copyleaks-webhook"]
    paths = {route.path for route in mount["app"].routes}
    assert {"/callbacks/{scan_id:path}/{token}", "/health"} <= paths


def _airflow(env: dict, *args: str) -> None:
    subprocess.run([sys.executable, "-m", "airflow", *args], env=env, check=True, capture_output=True)


@pytest.fixture(params=["env", "metastore"])
def api_server(request, airflow_db, sqlite_warehouse_url, tmp_path):
    """``airflow api-server`` in its own process group; yields its URL and log file."""
    env = dict(os.environ, AIRFLOW_CONN_IMAGE_AUDIT_WAREHOUSE=sqlite_warehouse_url)
    if request.param == "env":
        env["AIRFLOW_CONN_COPYLEAKS_DEFAULT"] = json.dumps(CONNECTION)
    else:  # its own Airflow home, so the shared test metadata database keeps no connection
        env.pop("AIRFLOW_CONN_COPYLEAKS_DEFAULT", None)
        env["AIRFLOW_HOME"] = str(tmp_path / "airflow")
        _airflow(env, "db", "migrate")
        extra = json.dumps(CONNECTION["extra"])
        _airflow(env, "connections", "add", "copyleaks_default", "--conn-type", "copyleaks",
                 "--conn-login", CONNECTION["login"], "--conn-password", CONNECTION["password"],
                 "--conn-extra", extra)  # fmt: skip
    port = free_port()
    log_path = tmp_path / "api-server.log"
    command = [sys.executable, "-m", "airflow", "api-server", "--port", str(port), "--workers", "1"]
    with server_process(
        command, port=port, health_path="/copyleaks-webhook/health", env=env, log_path=log_path, timeout=90
    ) as base:
        yield base, log_path


def test_callbacks_reach_the_warehouse_through_the_api_server(api_server, sqlite_warehouse_url):
    base, log_path = api_server
    prefix = f"{base}/copyleaks-webhook"
    seed_scan(sqlite_warehouse_url, "via-api-server")
    url = webhook_url(prefix, SECRET, "via-api-server")
    response = httpx.post(url, json=result_body("via-api-server"), timeout=30)
    assert response.status_code == 200 and response.json() == {"status": "stored"}
    assert scan_row(sqlite_warehouse_url, "via-api-server")["state"] == "completed"
    # The connection's secret is what authenticates: another one is refused.
    forged = webhook_url(prefix, "not-the-secret", "via-api-server")
    assert httpx.post(forged, json=result_body("via-api-server"), timeout=30).status_code == 403
    # Scan ids may hold "/" (percent-encoded in the URL): routed through the mount all the same.
    odd = "via/api-server%2f"
    seed_scan(sqlite_warehouse_url, odd)
    url = webhook_url(prefix, SECRET, odd)
    assert httpx.post(url, json=result_body(odd), timeout=30).json() == {"status": "stored"}
    # Airflow's access log records each request's path: without the per-scan token.
    log = Path(log_path).read_text()
    assert "/copyleaks-webhook/callbacks/via-api-server/***" in log
    assert webhook_token(SECRET, "via-api-server") not in log and SECRET not in log
