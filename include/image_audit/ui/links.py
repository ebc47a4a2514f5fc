"""Links into the Airflow UI: a run's page, its "Audit report" tab, and the tasks' extra link to that tab.

Light on purpose (no FastAPI, no warehouse): every task that carries the extra link imports it, and
Airflow 3 computes an operator's extra links in the worker when the task finishes (stored as XCom).
"""

from __future__ import annotations

from typing import TYPE_CHECKING
from urllib.parse import quote

from airflow.sdk import BaseOperatorLink

if TYPE_CHECKING:
    from airflow.sdk import BaseOperator
    from airflow.sdk.types import TaskInstanceKey

#: Where the Airflow UI is when ``[api] base_url`` is not set.
FALLBACK_BASE_URL = "http://localhost:8080"
#: The tab's route under a DAG run's page (the plugin's external view ``url_route``).
TAB_ROUTE = "audit-report"
TAB_NAME = "Audit report"
#: The trends page's route under a DAG's page, and its name.
TRENDS_ROUTE = "audit-trends"
TRENDS_NAME = "Audit trends"


def dag_url(dag_id: str) -> str:
    """The DAG's page in the Airflow UI (``[api] base_url``, else :data:`FALLBACK_BASE_URL`)."""
    from airflow.sdk.configuration import conf

    base = conf.get("api", "base_url", fallback=None) or FALLBACK_BASE_URL
    return f"{base.rstrip('/')}/dags/{quote(dag_id, safe='')}"


def run_url(dag_id: str, run_id: str) -> str:
    """The run's page in the Airflow UI."""
    return f"{dag_url(dag_id)}/runs/{quote(run_id, safe='')}"


def trends_tab_url(dag_id: str) -> str:
    """The DAG's "Audit trends" tab."""
    return f"{dag_url(dag_id)}/plugin/{TRENDS_ROUTE}"


def report_tab_url(dag_id: str, run_id: str) -> str:
    """The run's "Audit report" tab: its report once written, its live progress until then."""
    return f"{run_url(dag_id, run_id)}/plugin/{TAB_ROUTE}"


class AuditReportLink(BaseOperatorLink):
    """The "Audit report" button on a task: the tab of the run the task works for.

    A wait for another run's results (``target_dag_id``/``target_run_id``) links to that run's tab.
    """

    name = TAB_NAME

    def get_link(self, operator: BaseOperator, *, ti_key: TaskInstanceKey) -> str:
        dag_id = getattr(operator, "target_dag_id", None) or ti_key.dag_id
        run_id = getattr(operator, "target_run_id", None) or ti_key.run_id
        return report_tab_url(dag_id, run_id)
