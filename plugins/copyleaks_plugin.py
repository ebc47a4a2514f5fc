"""The ``image_audit`` Airflow plugin: serves the audit's webhook receiver from the Airflow api-server.

Callbacks then reach ``{api-server}/copyleaks-webhook/callbacks/{scan_id}/{token}``; set the Copyleaks
connection's ``webhook_base_url`` to the public form of ``{api-server}/copyleaks-webhook``.
"""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin

from copyleaks_provider.receiver import WEBHOOK_URL_PREFIX
from image_audit.receiver import create_warehouse_receiver_app


class CopyleaksPlugin(AirflowPlugin):
    name = "copyleaks"
    fastapi_apps = [
        {
            "app": create_warehouse_receiver_app(),
            "url_prefix": WEBHOOK_URL_PREFIX,
            "name": "Copyleaks webhook receiver",
        }
    ]
