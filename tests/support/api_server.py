"""The real ``airflow api-server`` with the project's plugin, for the plugin's and the UI tab's tests."""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path

from image_audit_dev.servers import free_port, server_process
from tests.support import ROOT

#: The Airflow plugin file every component loads.
PLUGIN_FILE = ROOT / "plugins" / "image_audit_plugin.py"
#: The webhook secret of ``CONNECTION``.
SECRET = "api-server-secret"
#: The Copyleaks connection the api-server's receiver reads (only its webhook secret matters here).
CONNECTION = {
    "conn_type": "copyleaks",
    "login": "a@b.c",
    "password": "key",
    "extra": {"webhook_secret": SECRET},
}
#: SimpleAuthManager users: a viewer (every role, VIEWER up, may read every DAG's runs) and a user
#: without a role, to whom the SimpleAuthManager grants nothing (it has no per-DAG permissions).
PASSWORDS = {"viewer": "viewer-password", "outsider": "outsider-password"}
USERS = "viewer:viewer,outsider:"


@contextlib.contextmanager
def ui_api_server(tmp: Path, warehouse: str, reports_url: str | None = None) -> Iterator[str]:
    """``airflow api-server`` with the plugin and the SimpleAuthManager (not all-admins: ``USERS`` with
    ``PASSWORDS``) on ``warehouse`` (and ``reports_url``, if given, as its reports location); yields its
    base URL. Its output goes to ``tmp / "api-server.log"``."""
    passwords = tmp / "passwords.json"
    passwords.write_text(json.dumps(PASSWORDS))
    env = dict(
        os.environ,
        **({"IMAGE_AUDIT_REPORTS_URL": reports_url} if reports_url else {}),
        AIRFLOW_CONN_IMAGE_AUDIT_WAREHOUSE=warehouse,
        AIRFLOW_CONN_COPYLEAKS_DEFAULT=json.dumps(CONNECTION),
        AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS="False",
        AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS=USERS,
        AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE=str(passwords),
        AIRFLOW__API_AUTH__JWT_SECRET="ui-tab-test-jwt-secret",
    )
    port = free_port()
    command = [sys.executable, "-m", "airflow", "api-server", "--port", str(port), "--workers", "1"]
    with server_process(
        command, port=port, health_path="/copyleaks-webhook/health", env=env,
        log_path=tmp / "api-server.log", timeout=90,
    ) as base:  # fmt: skip
        yield base
