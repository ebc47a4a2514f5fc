"""The audit's webhook receiver: the provider's receiver app storing into the warehouse.

Mounted in the Airflow api-server by ``plugins/image_audit_plugin.py``, or run alone for a public edge:
``python -m image_audit.webhook --host 0.0.0.0 --port 8090``.
"""

from __future__ import annotations

import argparse
import gc
import logging
from typing import Any

from fastapi import FastAPI

from copyleaks_provider.settings import DEFAULT_CONN_ID
from copyleaks_provider.webhooks.receiver import create_receiver_app
from image_audit.config import DEFAULT_WAREHOUSE_CONN_ID
from image_audit.warehouse.callback_sink import WarehouseCallbackSink


def create_warehouse_receiver_app(
    *,
    warehouse_url: str | None = None,
    warehouse_conn_id: str = DEFAULT_WAREHOUSE_CONN_ID,
    **options: Any,
) -> FastAPI:
    """The receiver storing into the warehouse at ``warehouse_url`` (default: that of the connection
    ``warehouse_conn_id``); ``options`` go to
    :func:`~copyleaks_provider.webhooks.receiver.create_receiver_app`."""
    return create_receiver_app(WarehouseCallbackSink(warehouse_url, warehouse_conn_id), **options)


def main(argv: list[str] | None = None) -> None:
    """Serve the receiver alone (a public edge). The webhook secrets and the warehouse come from
    connections (``AIRFLOW_CONN_<CONN_ID>`` or a configured secrets backend); the Airflow metadata
    database is not consulted outside Airflow."""
    import uvicorn

    parser = argparse.ArgumentParser(description="Run the Copyleaks webhook receiver alone")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8090)
    parser.add_argument(
        "--conn-id", default=DEFAULT_CONN_ID, help="the Copyleaks connection (webhook secrets)"
    )
    parser.add_argument(
        "--warehouse-conn-id", default=DEFAULT_WAREHOUSE_CONN_ID, help="the warehouse connection"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    app = create_warehouse_receiver_app(conn_id=args.conn_id, warehouse_conn_id=args.warehouse_conn_id)
    # Import now what the first callback would (reading the connection imports Airflow), then exempt
    # every object alive from garbage collection: full collections over that import graph would stall
    # the event loop and set the receiver's tail latency.
    from airflow.sdk import BaseHook  # noqa: F401

    gc.freeze()
    uvicorn.run(app, host=args.host, port=args.port, access_log=False)


if __name__ == "__main__":
    main()
