"""The DAG bundles of the local deployments: the project's ``dags/`` and, for the demo and
``./run cluster``, ``dev/dags`` (``catalog_ingestion``, the example producer of the catalog's Asset).

Airflow reads its bundles from ``[dag_processor] dag_bundle_config_list``; every component that parses
or runs a DAG (the dag-processor, the scheduler, the workers, ``airflow dags test``) needs the same list.
"""

from __future__ import annotations

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DEV_DAGS = ROOT / "dev" / "dags"
#: The environment variable of Airflow's ``[dag_processor] dag_bundle_config_list``.
BUNDLES_ENV = "AIRFLOW__DAG_PROCESSOR__DAG_BUNDLE_CONFIG_LIST"
LOCAL_BUNDLE = "airflow.dag_processing.bundles.local.LocalDagBundle"
#: Airflow's default bundle's name (its ``[core] dags_folder``): kept, so the audit DAG's bundle stays.
DAGS_BUNDLE = "dags-folder"
DEV_BUNDLE = "dev-dags"


def dag_bundle_config_list(dags_folder: Path, *, dev_dags: bool = True) -> str:
    """The JSON of ``dag_bundle_config_list``: ``dags_folder`` as Airflow's default bundle, and
    ``dev/dags`` as a second local bundle when ``dev_dags``."""
    bundles = [{"name": DAGS_BUNDLE, "classpath": LOCAL_BUNDLE, "kwargs": {"path": str(dags_folder)}}]
    if dev_dags:
        bundles.append({"name": DEV_BUNDLE, "classpath": LOCAL_BUNDLE, "kwargs": {"path": str(DEV_DAGS)}})
    return json.dumps(bundles)
