"""The ``copyleaks`` Airflow plugin: serves the Copyleaks webhook receiver from the Airflow api-server.

Callbacks then reach ``{api-server}/copyleaks-webhook/callbacks/{scan_id}/{token}``; set the Copyleaks
connection's ``webhook_base_url`` to the public form of ``{api-server}/copyleaks-webhook``.
"""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin

from copyleaks_provider.receiver import WEBHOOK_URL_PREFIX, create_receiver_app


class CopyleaksPlugin(AirflowPlugin):
    name = "copyleaks"
    fastapi_apps = [
        {"app": create_receiver_app(), "url_prefix": WEBHOOK_URL_PREFIX, "name": "Copyleaks webhook receiver"}
    ]
