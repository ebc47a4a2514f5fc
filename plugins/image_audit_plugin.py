"""The ``image_audit`` Airflow plugin: serves the audit's webhook receiver from the Airflow api-server, adds
an "Audit report" tab to each DAG run and an "Audit trends" tab to each DAG in the Airflow UI, and
registers the audit's "finish by HH:MM" deadline reference (the scheduler evaluates it when it creates a
run).

Callbacks then reach ``{api-server}/copyleaks-webhook/callbacks/{scan_id}/{token}``; set the Copyleaks
connection's ``webhook_base_url`` to the public form of ``{api-server}/copyleaks-webhook``. Those routes
are outside Airflow's authentication (each callback carries its HMAC token); the tab's page,
``{api-server}/image-audit/runs/{dag_id}/{run_id}``, is behind Airflow's auth manager
(``image_audit.ui.tab``).
"""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin

from copyleaks_provider.webhooks.receiver import WEBHOOK_URL_PREFIX
from image_audit.notifications.deadline import FinishByClockTime
from image_audit.ui.tab import EXTERNAL_VIEW, TRENDS_VIEW, URL_PREFIX, create_ui_app
from image_audit.webhook import create_warehouse_receiver_app


class ImageAuditPlugin(AirflowPlugin):
    name = "image_audit"
    fastapi_apps = [
        {
            "app": create_warehouse_receiver_app(),
            "url_prefix": WEBHOOK_URL_PREFIX,
            "name": "Copyleaks webhook receiver",
        },
        {"app": create_ui_app(), "url_prefix": URL_PREFIX, "name": "Image audit report pages"},
    ]
    external_views = [EXTERNAL_VIEW, TRENDS_VIEW]
    deadline_references = [FinishByClockTime]
