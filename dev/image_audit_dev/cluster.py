"""The production topology as local processes: ``./run cluster``.

The same components as ``docker-compose.yaml``, without Docker: Airflow's api-server (which also serves
the webhook receiver through the ``image_audit`` plugin), scheduler, dag-processor, triggerer and a
Celery worker, with PostgreSQL holding the metadata database and the warehouse and Redis as the Celery
broker, plus the Copyleaks emulator standing in for Copyleaks.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from image_audit_dev.bundles import BUNDLES_ENV, dag_bundle_config_list
from image_audit_dev.servers import SERVICE_NICENESS, dev_environment, free_port, niced, signal_group

ROOT = Path(__file__).resolve().parents[2]
#: Any database on the server will do: the cluster creates its own ``<name>_airflow`` and
#: ``<name>_warehouse`` databases beside it.
DEFAULT_POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/test"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
#: The Airflow components, as in docker-compose.yaml (service name -> command).
COMPONENTS = {
    "airflow-apiserver": ["api-server"],
    "airflow-scheduler": ["scheduler"],
    "airflow-dag-processor": ["dag-processor"],
    "airflow-triggerer": ["triggerer"],
    "airflow-worker": ["celery", "worker", "--concurrency", "4"],
}
#: Airflow's recovery timers, shortened for the chaos suite (``LocalCluster(fast_recovery=True)``) so a
#: killed component is noticed in seconds rather than minutes. Each is a documented Airflow setting;
#: production keeps Airflow's defaults (those of compose), which are the same mechanisms, only slower.
FAST_RECOVERY_ENV = {
    # A task's supervisor heartbeats every 2 s (default 5); a task whose worker died is declared
    # failed (and retried, with the DAG's retries) after 10 s without one (default 300 s), and the
    # scheduler looks for such tasks every 2 s (default 10). 10 s is 5 missed heartbeats, sent by the
    # supervisor (not the busy task process), so a loaded machine does not fail a live task.
    "AIRFLOW__WORKERS__MIN_HEARTBEAT_INTERVAL": "2",
    "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": "10",
    "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL": "2",
    # A restarted scheduler adopts (or resets) the task instances a dead one had queued once the dead
    # one's heartbeat (every second, SCHEDULER_HEARTBEAT_SEC) is 10 s old (default 30), and looks for
    # them every 5 s (default every 300 s: the first look at start-up comes before the dead scheduler
    # has aged past the threshold).
    "AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_THRESHOLD": "10",
    "AIRFLOW__SCHEDULER__ORPHANED_TASKS_CHECK_INTERVAL": "5",
    # A restarted triggerer takes over the triggers of a dead one once the dead one's heartbeat (every
    # second here, default 5) is 6 s old (default 30).
    "AIRFLOW__TRIGGERER__JOB_HEARTBEAT_SEC": "1",
    "AIRFLOW__TRIGGERER__TRIGGERER_HEALTH_CHECK_THRESHOLD": "6",
    # A task left queued (its Celery message taken by a worker that died before starting it, or never
    # sent by a scheduler that died) is queued again, or failed, by the scheduler after 90 s (default
    # 600 s). Celery's own redelivery (visibility timeout, with acks_late) stays at Airflow's 24 h: a
    # shorter one would redeliver tasks still running on a live worker, which is worse than waiting.
    "AIRFLOW__SCHEDULER__TASK_QUEUED_TIMEOUT": "90",
    "AIRFLOW__SCHEDULER__TASK_QUEUED_TIMEOUT_CHECK_INTERVAL": "5",
}
#: With ``fast_recovery`` the cluster also caps every task's retry delay at 2 s (the DAG's submit task
#: waits 20-40 s before its first retry, which protects a flapping account in production but would
#: be most of the chaos suite's time). It is an Airflow cluster policy, ``task_policy`` in
#: ``$AIRFLOW_HOME/config/airflow_local_settings.py``, the documented place for a deployment's
#: overrides of what DAGs set; applied when the dag-processor parses the DAGs.
FAST_RETRY_POLICY = """\
from datetime import timedelta

FAST_RETRY = timedelta(seconds=2)


def task_policy(task):
    \"\"\"The chaos suite's cluster: every retry within 2 s (see image_audit_dev.cluster).\"\"\"
    task.retry_delay = FAST_RETRY
    task.max_retry_delay = FAST_RETRY
"""


@dataclass
class LocalCluster:
    """Start with ``with LocalCluster(...) as cluster:``; everything started is stopped on exit."""

    postgres_url: str = DEFAULT_POSTGRES_URL
    redis_url: str = DEFAULT_REDIS_URL
    home: Path = ROOT / "var" / "cluster"
    dags_folder: Path = ROOT / "dags"
    name: str = "image_audit"
    emulator_credits: int = 1_000_000
    #: The account's request budget, on the emulator and the connection alike: Copyleaks' documented
    #: 10/s by default; 0 lifts it (benchmarks of our own overhead).
    account_requests_per_second: int = 10
    api_port: int = field(default_factory=free_port)
    emulator_port: int = field(default_factory=free_port)
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)
    webhook_secret: str = field(default_factory=lambda: secrets.token_urlsafe(32))
    #: One secret for every component's execution-API tokens.
    jwt_secret: str = field(default_factory=lambda: secrets.token_urlsafe(32))
    #: Set last in every component's environment (e.g. reports in a bucket and its connection).
    extra_env: dict[str, str] = field(default_factory=dict)
    #: Airflow's recovery timers shortened (:data:`FAST_RECOVERY_ENV`), for the chaos suite.
    fast_recovery: bool = False
    #: The warehouse as the components reach it (e.g. through a TCP proxy a test cuts); default
    #: :attr:`warehouse_url`. The cluster itself (migrations) always uses :attr:`warehouse_url`.
    component_warehouse_url: str | None = None
    #: ``dev/dags`` as a second DAG bundle (``image_audit_dev.bundles``): ``catalog_ingestion``, the
    #: example producer of the catalog's Asset, beside the audit DAG.
    dev_dags: bool = False
    _spawned: set[str] = field(default_factory=set, repr=False)

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    @property
    def emulator_url(self) -> str:
        return f"http://127.0.0.1:{self.emulator_port}"

    def database_url(self, suffix: str) -> str:
        return (
            make_url(self.postgres_url)
            .set(database=f"{self.name}_{suffix}")
            .render_as_string(hide_password=False)
        )

    @property
    def warehouse_url(self) -> str:
        return self.database_url("warehouse")

    @property
    def metadata_url(self) -> str:
        """Airflow's metadata database (``<name>_airflow``)."""
        return self.database_url("airflow")

    def environment(self) -> dict[str, str]:
        metadata = make_url(self.metadata_url).set(drivername="postgresql+psycopg2")
        metadata_url = metadata.render_as_string(hide_password=False)
        warehouse = self.component_warehouse_url or self.warehouse_url
        env = dev_environment()  # the emulator runs from dev/
        env.update(
            AIRFLOW_HOME=str(self.home / "airflow"),
            AIRFLOW__CORE__DAGS_FOLDER=str(self.dags_folder),
            AIRFLOW__CORE__PLUGINS_FOLDER=str(ROOT / "plugins"),
            AIRFLOW__CORE__LOAD_EXAMPLES="False",
            AIRFLOW__CORE__EXECUTOR="CeleryExecutor",
            AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION="False",
            AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS="True",
            AIRFLOW__CORE__EXECUTION_API_SERVER_URL=f"{self.api_url}/execution/",
            AIRFLOW__API__BASE_URL=self.api_url,
            AIRFLOW__API__PORT=str(self.api_port),
            AIRFLOW__API_AUTH__JWT_SECRET=self.jwt_secret,
            AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=metadata_url,
            AIRFLOW__CELERY__BROKER_URL=self.redis_url,
            AIRFLOW__CELERY__RESULT_BACKEND="db+" + metadata_url,
            AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC="1",
            AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL="5",
            AIRFLOW_CONN_IMAGE_AUDIT_WAREHOUSE=warehouse,
            IMAGE_AUDIT_REPORTS_DIR=str(self.home / "reports"),
            IMAGE_AUDIT_REPORT_ALLOW_PRIVATE_URLS="true",  # the catalog's images are on the local emulator
            # The Copyleaks account's shared token and request budget live in the warehouse's
            # PostgreSQL, which every worker, the triggerer and the api-server reach.
            AIRFLOW_CONN_COPYLEAKS_ACCOUNT_STATE=warehouse,
            AIRFLOW_CONN_COPYLEAKS_DEFAULT=json.dumps(
                {
                    "conn_type": "copyleaks",
                    "login": "demo@image-audit.dev",
                    "password": "demo-api-key",
                    "extra": {
                        "identity_url": self.emulator_url,
                        "api_url": self.emulator_url,
                        "webhook_base_url": f"{self.api_url}/copyleaks-webhook",
                        "webhook_secret": self.webhook_secret,
                        "account_state_conn_id": "copyleaks_account_state",
                        "requests_per_second": self.account_requests_per_second,
                    },
                }
            ),
        )
        if self.dev_dags:
            env[BUNDLES_ENV] = dag_bundle_config_list(self.dags_folder)
        if self.fast_recovery:
            env.update(FAST_RECOVERY_ENV)
        env.update(self.extra_env)
        return env

    # --- lifecycle -------------------------------------------------------------------------------
    def start(self, timeout: float = 180) -> LocalCluster:
        (self.home / "logs").mkdir(parents=True, exist_ok=True)
        if self.fast_recovery:
            config = self.home / "airflow" / "config"
            config.mkdir(parents=True, exist_ok=True)
            (config / "airflow_local_settings.py").write_text(FAST_RETRY_POLICY)
        self._create_databases()
        env = self.environment()
        subprocess.run(
            [sys.executable, "-m", "airflow", "db", "migrate"],
            env=env,
            check=True,
            stdout=(self.home / "logs" / "db-migrate.log").open("w"),
            stderr=subprocess.STDOUT,
        )
        emulator = ["--port", str(self.emulator_port), "--credits", str(self.emulator_credits)]
        emulator += ["--api-requests-per-second", str(self.account_requests_per_second)]
        command = [sys.executable, "-m", "copyleaks_emulator", *emulator]
        self._spawn("emulator", niced(command, SERVICE_NICENESS), env)
        for name in COMPONENTS:
            self.start_component(name, env)
        self.wait_healthy(timeout)
        return self

    def start_component(self, name: str, env: dict[str, str] | None = None) -> None:
        """Start the Airflow component ``name`` (a key of :data:`COMPONENTS`), e.g. again after
        :meth:`kill`; its output is appended to ``<home>/logs/<name>.log``."""
        extra = ["--port", str(self.api_port)] if name == "airflow-apiserver" else []
        command = [sys.executable, "-m", "airflow", *COMPONENTS[name], *extra]
        self._spawn(name, command, env or self.environment())

    def kill(self, name: str, signum: int = signal.SIGKILL, grace: float = 20) -> None:
        """Send ``signum`` (default SIGKILL: its host died) to component ``name`` and every process it
        started, then SIGKILL what is left after ``grace`` s. Every process: its group (the api-server's
        workers, Celery's forks, the task supervisors) and the processes that left it (each task
        runner leads a process group of its own, and would go on submitting as an orphan)."""
        process = self.processes.pop(name)
        try:
            descendants = psutil.Process(process.pid).children(recursive=True)
        except psutil.Error:
            descendants = []
        signal_group(process, signum)
        for child in descendants:
            with contextlib.suppress(psutil.Error):
                child.send_signal(signum)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(grace)
        signal_group(process, signal.SIGKILL)
        for child in descendants:
            with contextlib.suppress(psutil.Error):
                child.kill()
        process.wait()

    def stop(self, grace: float = 20) -> None:
        """SIGTERM every process group started (children included), SIGKILL what outlives ``grace``."""
        for process in self.processes.values():
            signal_group(process, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for process in self.processes.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(max(0.1, deadline - time.monotonic()))
            # The leader may be gone while its children (api-server workers, Celery forks) are not.
            signal_group(process, signal.SIGKILL)
            process.wait()
        self.processes.clear()

    def drop_databases(self) -> None:
        admin = self._admin_engine()
        with admin.connect() as conn:
            for suffix in ("airflow", "warehouse"):
                conn.execute(text(f'DROP DATABASE IF EXISTS "{self.name}_{suffix}" WITH (FORCE)'))
        admin.dispose()

    def __enter__(self) -> LocalCluster:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def _admin_engine(self):
        url = make_url(self.postgres_url).set(drivername="postgresql+psycopg2")
        return create_engine(url, isolation_level="AUTOCOMMIT")

    def _create_databases(self) -> None:
        admin = self._admin_engine()
        with admin.connect() as conn:
            existing = set(conn.execute(text("SELECT datname FROM pg_database")).scalars())
            for suffix in ("airflow", "warehouse"):
                if f"{self.name}_{suffix}" not in existing:
                    conn.execute(text(f'CREATE DATABASE "{self.name}_{suffix}"'))
        admin.dispose()
        from image_audit.warehouse.engine import get_engine
        from image_audit.warehouse.schema import migrate

        migrate(get_engine(self.warehouse_url))

    def _spawn(self, name: str, command: list[str], env: dict[str, str]) -> None:
        # A component started again (after kill) appends to its log; a new cluster starts it afresh.
        log = (self.home / "logs" / f"{name}.log").open("a" if name in self._spawned else "w")
        self._spawned.add(name)
        self.processes[name] = subprocess.Popen(
            command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )

    def wait_healthy(self, timeout: float = 180) -> None:
        """Until the api-server reports the metadatabase, scheduler, triggerer and dag-processor healthy
        and the emulator answers (``RuntimeError`` if a component exited)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            dead = [name for name, p in self.processes.items() if p.poll() is not None]
            if dead:
                tails = "\n".join(f"--- {name}.log, last lines:\n{self._log_tail(name)}" for name in dead)
                raise RuntimeError(f"{dead} exited; see {self.home / 'logs'}\n{tails}")
            try:
                health = httpx.get(f"{self.api_url}/api/v2/monitor/health", timeout=2).json()
                emulator = httpx.get(f"{self.emulator_url}/health", timeout=2).status_code == 200
                components = ("metadatabase", "scheduler", "triggerer", "dag_processor")
                if emulator and all(health.get(c, {}).get("status") == "healthy" for c in components):
                    return
            except (httpx.HTTPError, ValueError):
                pass
            time.sleep(1)
        raise TimeoutError(f"the cluster was not healthy after {timeout} s; see {self.home / 'logs'}")

    # --- the REST API ----------------------------------------------------------------------------
    def trigger_dag_run(
        self, dag_id: str, logical_date: str | None, conf: dict | None = None, timeout: float = 120
    ) -> str:
        """Trigger ``dag_id`` through Airflow's REST API once the dag-processor has parsed it
        (``logical_date`` None: a run without one)."""
        deadline = time.monotonic() + timeout
        while self._get(f"/api/v2/dags/{dag_id}") is None:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{dag_id} was not parsed within {timeout} s")
            time.sleep(1)
        response = httpx.post(
            f"{self.api_url}/api/v2/dags/{dag_id}/dagRuns",
            json={"logical_date": logical_date, "conf": conf or {}},
            timeout=30,
        )
        response.raise_for_status()
        return response.json()["dag_run_id"]

    def wait_for_run(
        self,
        dag_id: str,
        run_id: str,
        timeout: float = 300,
        poll: float = 1.0,
        while_running: Callable[[], None] | None = None,
    ) -> str:
        """The run's final state, polled through the REST API; ``while_running`` is called at each poll."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            run = self._get(f"/api/v2/dags/{dag_id}/dagRuns/{run_id}")
            if run is not None and run["state"] in ("success", "failed"):
                return run["state"]
            if while_running is not None:
                while_running()
            time.sleep(poll)
        raise TimeoutError(f"run {run_id} still running after {timeout} s")

    def _get(self, path: str) -> dict | None:
        """The api-server's JSON answer to ``GET path``, or ``None`` while it cannot give one (not
        yet there, restarting, or too busy to answer in 10 s on a loaded machine): callers poll."""
        try:
            response = httpx.get(f"{self.api_url}{path}", timeout=10)
        except httpx.TransportError:
            return None
        return response.json() if response.status_code == 200 else None

    def _log_tail(self, name: str, lines: int = 30) -> str:
        log = self.home / "logs" / f"{name}.log"
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:]) if log.exists() else ""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--postgres-url", default=DEFAULT_POSTGRES_URL, help="any database on the server")
    parser.add_argument("--redis-url", default=DEFAULT_REDIS_URL, help="the Celery broker")
    parser.add_argument("--name", default="image_audit", help="prefix of the databases created")
    parser.add_argument("--home", type=Path, default=ROOT / "var" / "cluster")
    parser.add_argument("--api-port", type=int, default=8080)
    args = parser.parse_args(argv)
    cluster = LocalCluster(
        postgres_url=args.postgres_url,
        redis_url=args.redis_url,
        home=args.home,
        name=args.name,  # by keyword: the fourth field is dags_folder
        api_port=args.api_port,
        dev_dags=True,  # catalog_ingestion: trigger it to see the audit start from the catalog's Asset
    )
    # SIGTERM (docker stop, systemd, kill) unwinds like Ctrl-C, also while the cluster is starting.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    with cluster:
        print(f"Airflow UI and REST API: {cluster.api_url} (every user is admin: local use only)")
        print(f"Webhook receiver:        {cluster.api_url}/copyleaks-webhook/health")
        print(f"Copyleaks emulator:      {cluster.emulator_url}")
        print("Example producer:        the catalog_ingestion DAG (dev/dags): each run starts an audit")
        print(f"Warehouse:               {make_url(cluster.warehouse_url).render_as_string()}")
        print(f"Logs:                    {cluster.home / 'logs'}\nPress Ctrl-C to stop.")
        try:
            while all(p.poll() is None for p in cluster.processes.values()):
                time.sleep(1)
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
