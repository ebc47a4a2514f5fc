"""Provider metadata Airflow reads through the ``apache_airflow_provider`` entry point.

It registers the ``copyleaks`` connection type and its form, so the connection shows in the UI.
"""

from __future__ import annotations


def get_provider_info() -> dict:
    """The provider dict (schema: ``airflow/provider_info.schema.json``); form fields go to ``extra``."""
    return {
        "package-name": "airflow-provider-copyleaks",
        "name": "Copyleaks AI Image Detector",
        "description": "Detect AI-generated images with Copyleaks: hook, submit operator, webhook receiver.",
        "versions": ["0.1.0"],
        "connection-types": [
            {
                "hook-class-name": "copyleaks_provider.hooks.copyleaks.CopyleaksHook",
                "connection-type": "copyleaks",
                "hook-name": "Copyleaks AI Image Detector",
                "ui-field-behaviour": {
                    "hidden-fields": ["host", "port", "schema", "extra"],
                    "relabeling": {"login": "Email", "password": "API key"},
                    "placeholders": {"login": "you@company.com"},
                },
                "conn-fields": {
                    "identity_url": {
                        "label": "Identity URL",
                        "schema": {"type": ["string", "null"], "default": "https://id.copyleaks.com"},
                    },
                    "api_url": {
                        "label": "API URL",
                        "schema": {"type": ["string", "null"], "default": "https://api.copyleaks.com"},
                    },
                    "sandbox": {
                        "label": "Sandbox by default",
                        "description": "Mock results, no credits (a run's sandbox Param overrides it)",
                        "schema": {"type": ["boolean", "null"], "default": False},
                    },
                    "webhook_base_url": {
                        "label": "Webhook base URL",
                        "description": "Public URL of the receiver, e.g. https://airflow.example.com/copyleaks-webhook",
                        "schema": {"type": ["string", "null"]},
                    },
                    "webhook_secret": {
                        "label": "Webhook secret",
                        "description": "HMAC key of the callback URLs",
                        "schema": {"type": ["string", "null"], "format": "password"},
                    },
                    "previous_webhook_secrets": {
                        "label": "Previous webhook secrets",
                        "description": "Still accepted during a rotation (comma-separated)",
                        "schema": {"type": ["string", "null"], "format": "password"},
                    },
                    "require_callback_payload": {
                        "label": "Require the callback payload",
                        "description": "Accept a callback only when it echoes the submission's "
                        "developerPayload (check that Copyleaks echoes it on a sandbox scan first)",
                        "schema": {"type": ["boolean", "null"], "default": False},
                    },
                    "max_concurrency": {
                        "label": "Max concurrent requests per task",
                        "schema": {"type": ["integer", "null"], "default": 16},
                    },
                    "requests_per_second": {
                        "label": "Account requests per second",
                        "description": "Copyleaks' limit for the whole account (10), shared by every "
                        "task and worker; 0 = no limit",
                        "schema": {"type": ["number", "null"], "default": 10},
                    },
                    "checks_per_15_minutes": {
                        "label": "Account sync checks per 15 minutes",
                        "schema": {"type": ["integer", "null"], "default": 900},
                    },
                    "account_state_conn_id": {
                        "label": "Account state connection",
                        "description": "A postgres (or sqlite) connection where every component shares the "
                        "access token and the request budget; empty: a SQLite file in the Airflow home",
                        "schema": {"type": ["string", "null"]},
                    },
                    "max_login_wait_seconds": {
                        "label": "Max wait for a login block (seconds)",
                        "schema": {"type": ["number", "null"], "default": 330},
                    },
                    "timeout_seconds": {
                        "label": "HTTP timeout (seconds)",
                        "schema": {"type": ["number", "null"], "default": 30},
                    },
                },
            }
        ],
    }
