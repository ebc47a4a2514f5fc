"""The chaos suite's one cluster (started once, every scenario a run of its own on it) and its table of
scenario, recovery time and figures, printed at the end of the pytest run."""

from __future__ import annotations

import uuid
from urllib.parse import urlsplit

import pytest
from sqlalchemy.engine import make_url

from image_audit_dev.cluster import LocalCluster
from tests.chaos.harness import ROWS, Chaos
from tests.support.tcp_proxy import TcpProxy
from tests.support.warehouse import POSTGRES_URL, REDIS_URL

#: The table's columns: (heading, key of a row).
COLUMNS = (
    ("scenario", "scenario"),
    ("fault -> recovery s", "recovery_s"),
    ("run s", "run_s"),
    ("images", "images"),
    ("stored/delivered", "stored_delivered"),
    ("duplicates", "duplicates"),
    ("double submissions", "double_submissions"),
    ("idempotent resends", "idempotent_resends"),
    ("429 api/login", "429"),
    ("peak req/s", "peak_rps"),
    ("logins", "logins"),
    ("submit tasks retried", "retried_tasks"),
)


def table_lines(rows: list[dict]) -> list[str]:
    """The rows as a Markdown table (the README's reliability section shows one)."""
    cells = [
        {
            **row,
            "stored_delivered": f"{row['stored']}/{row['delivered']}",
            "429": f"{row['api_429']}/{row['login_429']}",
        }
        for row in rows
    ]
    lines = ["| " + " | ".join(heading for heading, _ in COLUMNS) + " |"]
    lines.append("|" + "|".join(" --- " for _ in COLUMNS) + "|")
    lines += ["| " + " | ".join(str(cell.get(key, "")) for _, key in COLUMNS) + " |" for cell in cells]
    return lines


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    if not ROWS:
        return
    terminalreporter.section("chaos suite: faults of the distributed deployment")
    for line in table_lines(ROWS):
        terminalreporter.write_line(line)


#: The chaos scenarios this session runs (after -k, -m and the like have deselected theirs).
PLANNED: list = []


def pytest_collection_finish(session) -> None:
    PLANNED.extend(item for item in session.items if item.get_closest_marker("chaos"))


@pytest.fixture(scope="session")
def chaos(tmp_path_factory):
    """One cluster for the whole suite, with Airflow's recovery timers short (``fast_recovery``), its
    Celery broker and its warehouse behind TCP proxies the scenarios cut. Its processes are stopped and
    its databases dropped however the suite ends (the logs stay under pytest's tmp_path)."""
    redis = urlsplit(REDIS_URL or "")
    redis_proxy = TcpProxy(redis.hostname or "127.0.0.1", redis.port or 6379).start()
    name = f"ia_chaos_{uuid.uuid4().hex[:8]}"
    cluster = LocalCluster(
        postgres_url=POSTGRES_URL or "",
        redis_url=f"redis://127.0.0.1:{redis_proxy.port}/8",  # a Redis database of its own
        home=tmp_path_factory.mktemp("chaos-cluster"),
        name=name,
        fast_recovery=True,
        extra_env={
            # A Celery queue of its own too: another test session's cluster on this Redis takes none
            # of these tasks.
            "AIRFLOW__OPERATORS__DEFAULT_QUEUE": name,
            # Only the scenarios' runs: no scheduled run of "yesterday" beside the first of them.
            "AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE": "False",
        },
    )
    warehouse = make_url(cluster.warehouse_url)
    warehouse_proxy = TcpProxy(warehouse.host or "127.0.0.1", warehouse.port or 5432).start()
    via_proxy = warehouse.set(host="127.0.0.1", port=warehouse_proxy.port)
    cluster.component_warehouse_url = via_proxy.render_as_string(hide_password=False)
    try:
        cluster.start()
        chaos = Chaos(cluster, redis_proxy, warehouse_proxy)
        chaos.planned = len(PLANNED)
        yield chaos
    finally:
        cluster.stop(grace=3)  # nothing to shut down gracefully: its databases go next
        redis_proxy.stop()
        warehouse_proxy.stop()
        cluster.drop_databases()
