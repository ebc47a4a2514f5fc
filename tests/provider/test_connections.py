"""The ``copyleaks`` connection type as Airflow sees it, and connections defined in the environment."""

from __future__ import annotations

import json
import tomllib

import pytest

from copyleaks_provider.get_provider_info import get_provider_info
from copyleaks_provider.hooks.copyleaks import CopyleaksHook
from copyleaks_provider.settings import DEFAULT_API_URL, DEFAULT_IDENTITY_URL
from image_audit_dev.servers import BackgroundServer
from tests.support import ROOT
from tests.support.fake_copyleaks import LOGIN, FakeCopyleaks

API_KEY = "conn-test-api-key-0123456789"
WEBHOOK_SECRET = "conn-test-webhook-secret-0123456789"


@pytest.fixture(scope="module")
def providers():
    from airflow.providers_manager import ProvidersManager

    return ProvidersManager()


def test_airflow_finds_the_provider_and_its_hook(providers):
    from airflow.sdk.providers_manager_runtime import ProvidersManagerTaskRuntime

    info = providers.providers["airflow-provider-copyleaks"]
    project = tomllib.loads((ROOT / "providers" / "copyleaks" / "pyproject.toml").read_text())["project"]
    assert info.version == project["version"]  # the installed distribution's
    assert info.data["connection-types"] == get_provider_info()["connection-types"]
    hook = ProvidersManagerTaskRuntime().hooks["copyleaks"]
    assert hook.hook_class_name == "copyleaks_provider.hooks.copyleaks.CopyleaksHook"
    assert hook.connection_id_attribute_name == "copyleaks_conn_id"
    assert hook.hook_name == "Copyleaks AI Image Detector"
    assert hook.connection_testable


def test_the_connection_form(providers):  # what the api-server's connection form is built from
    widgets = {
        name.removeprefix("extra__copyleaks__"): widget
        for name, widget in providers.connection_form_widgets.items()
        if name.startswith("extra__copyleaks__")
    }
    assert set(widgets) == {
        "identity_url",
        "api_url",
        "sandbox",
        "webhook_base_url",
        "webhook_secret",
        "previous_webhook_secrets",
        "require_callback_payload",
        "max_concurrency",
        "requests_per_second",
        "checks_per_15_minutes",
        "account_state_conn_id",
        "max_login_wait_seconds",
        "timeout_seconds",
    }
    assert {name for name, widget in widgets.items() if widget.is_sensitive} == {
        "webhook_secret",
        "previous_webhook_secrets",
    }
    assert widgets["identity_url"].field["value"] == DEFAULT_IDENTITY_URL
    assert widgets["api_url"].field["value"] == DEFAULT_API_URL
    assert widgets["sandbox"].field["schema"]["type"] == ["boolean", "null"]

    behaviour = providers.field_behaviours["copyleaks"]
    assert behaviour["relabeling"] == {"login": "Email", "password": "API key"}
    assert {"host", "port", "schema"} <= set(behaviour["hidden_fields"])


def test_airflow_redacts_the_webhook_secrets_in_the_extra():
    from airflow.sdk._shared.secrets_masker import redact

    extra = {"webhook_secret": WEBHOOK_SECRET, "previous_webhook_secrets": "old-secret-123", "api_url": "x"}
    assert redact(extra) == {"webhook_secret": "***", "previous_webhook_secrets": "***", "api_url": "x"}


def test_a_connection_from_the_environment(monkeypatch):
    conn = {
        "conn_type": "copyleaks",
        "login": "auditor@example.com",
        "password": API_KEY,
        "extra": {
            "identity_url": "https://id.example.com/",
            "api_url": "https://api.example.com",
            "sandbox": True,
            "webhook_base_url": "https://airflow.example.com/copyleaks-webhook/",
            "webhook_secret": WEBHOOK_SECRET,
            "previous_webhook_secrets": "old-one-123, old-two-456",
            "max_concurrency": 4,
            "requests_per_second": 2.5,
            "timeout_seconds": 10,
        },
    }
    monkeypatch.setenv("AIRFLOW_CONN_COPYLEAKS_DEFAULT", json.dumps(conn))
    settings = CopyleaksHook().settings

    assert settings.email == "auditor@example.com"
    assert settings.api_key.get_secret_value() == API_KEY
    assert settings.identity_url == "https://id.example.com"
    assert settings.api_url == "https://api.example.com"
    assert settings.sandbox is True
    assert settings.webhook_base_url == "https://airflow.example.com/copyleaks-webhook"
    assert settings.webhook_secrets == [WEBHOOK_SECRET, "old-one-123", "old-two-456"]
    assert (settings.max_concurrency, settings.requests_per_second, settings.timeout_seconds) == (4, 2.5, 10)
    assert API_KEY not in repr(settings)
    assert WEBHOOK_SECRET not in repr(settings)


def test_defaults_and_fields_stored_by_the_ui_form(monkeypatch):
    conn = {
        "conn_type": "copyleaks",
        "login": "auditor@example.com",
        "password": API_KEY,
        "extra": {"extra__copyleaks__sandbox": True, "extra__copyleaks__api_url": ""},
    }
    monkeypatch.setenv("AIRFLOW_CONN_COPYLEAKS_UI", json.dumps(conn))
    settings = CopyleaksHook("copyleaks_ui").settings
    assert settings.sandbox is True
    assert settings.identity_url == DEFAULT_IDENTITY_URL
    assert settings.api_url == DEFAULT_API_URL
    assert settings.webhook_base_url is None
    assert settings.max_concurrency == 16


def test_the_connection_yields_the_hook_and_tests_it(monkeypatch):
    from airflow.sdk import Connection

    fake = FakeCopyleaks()
    with BackgroundServer(fake.app) as server:
        conn = {
            "conn_type": "copyleaks",
            "login": "conn-test@example.com",
            "password": API_KEY,
            "extra": {"identity_url": server.url, "api_url": server.url},
        }
        monkeypatch.setenv("AIRFLOW_CONN_COPYLEAKS_DEFAULT", json.dumps(conn))
        hook = Connection.get("copyleaks_default").get_hook()
        assert isinstance(hook, CopyleaksHook)
        assert hook.test_connection() == (True, "Logged in to Copyleaks")
    assert fake.received(LOGIN)[0].body == {"email": "conn-test@example.com", "key": API_KEY}
