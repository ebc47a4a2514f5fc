"""docker-compose.yaml, checked statically against the topology of ./run cluster (no Docker here). What
the image installs and the code compose mounts into it: test_image.py."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from sqlalchemy.engine import make_url

from copyleaks_provider.settings import CopyleaksSettings
from copyleaks_provider.webhooks.receiver import WEBHOOK_URL_PREFIX
from image_audit_dev.cluster import COMPONENTS, LocalCluster
from tests.support import ROOT
from tests.support.dockerfile import shell_commands


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yaml").read_text())


def _env_file_connection(path: Path) -> CopyleaksSettings:
    line = next(x for x in path.read_text().splitlines() if x.startswith("AIRFLOW_CONN_COPYLEAKS_DEFAULT="))
    conn = json.loads(line.split("=", 1)[1])
    assert conn["conn_type"] == "copyleaks"

    class _Conn:
        login, password, extra_dejson = conn["login"], conn["password"], conn["extra"]

    return CopyleaksSettings.from_connection(_Conn)


def test_every_local_component_is_a_service_running_the_same_command(compose):
    services = compose["services"]
    assert set(COMPONENTS) <= set(services)
    for name, args in COMPONENTS.items():
        command = services[name]["command"]
        expected = " ".join(a for a in args if not a.startswith("--") and not a.isdigit())
        assert command == expected, name
    assert {"postgres", "redis", "airflow-init", "copyleaks-emulator"} <= set(services)


def test_shared_settings_match_the_local_cluster(compose):
    common = compose["x-airflow-common"]
    env = common["environment"]
    assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    assert env["AIRFLOW__CELERY__BROKER_URL"].startswith("redis://redis:")
    assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith("postgresql+psycopg2://")
    assert (
        env["AIRFLOW_CONN_IMAGE_AUDIT_WAREHOUSE"].startswith("postgresql://")
        and "image_audit_warehouse" in (env["AIRFLOW_CONN_IMAGE_AUDIT_WAREHOUSE"])
    )
    assert "/execution/" in env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"]
    # The warehouse database the connection names is the one the stack's PostgreSQL creates at start
    warehouse = make_url(env["AIRFLOW_CONN_IMAGE_AUDIT_WAREHOUSE"]).database
    postgres = compose["services"]["postgres"]
    init_scripts = [v.split(":")[0] for v in postgres["volumes"] if "/docker-entrypoint-initdb.d/" in v]
    created = set()
    for script in init_scripts:
        created |= set(re.findall(r"CREATE DATABASE (\w+)", (ROOT / script).read_text(), re.IGNORECASE))
    assert warehouse in created


def test_receiver_is_exposed_and_the_emulator_is_an_optional_profile(compose):
    services = compose["services"]
    assert "8080:8080" in services["airflow-apiserver"]["ports"]
    assert services["copyleaks-emulator"]["profiles"] == ["emulator"]
    emulator = _env_file_connection(ROOT / "compose" / "emulator.env")
    assert emulator.webhook_base_url == f"http://airflow-apiserver:8080{WEBHOOK_URL_PREFIX}"
    assert emulator.api_url == emulator.identity_url == "http://copyleaks-emulator:8099"
    real = _env_file_connection(ROOT / "compose" / "copyleaks.env.example")
    assert real.api_url == "https://api.copyleaks.com" and real.webhook_base_url.endswith(WEBHOOK_URL_PREFIX)


def test_every_component_shares_the_copyleaks_account_state(compose):
    """The account's token and request budget live in a connection every service defines, not in a
    process: both connection files name it, and the stack defines it on the shared PostgreSQL."""
    shared = compose["x-airflow-common"]["environment"]
    for env_file in ("emulator.env", "copyleaks.env.example"):
        settings = _env_file_connection(ROOT / "compose" / env_file)
        variable = f"AIRFLOW_CONN_{settings.account_state_conn_id.upper()}"
        assert shared[variable].startswith("postgresql://"), env_file
        assert settings.requests_per_second == 10


def test_the_local_cluster_sets_what_every_compose_service_shares(compose, tmp_path):
    """Settings that shape the topology are set in both places; the rest is host-specific."""
    local = LocalCluster(home=tmp_path, api_port=18080, emulator_port=18099).environment()
    shared = compose["x-airflow-common"]["environment"]
    topology = {
        "AIRFLOW__CORE__EXECUTOR",
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL",
        "AIRFLOW__API_AUTH__JWT_SECRET",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN",
        "AIRFLOW__CELERY__BROKER_URL",
        "AIRFLOW__CELERY__RESULT_BACKEND",
        "AIRFLOW_CONN_IMAGE_AUDIT_WAREHOUSE",
        "IMAGE_AUDIT_REPORTS_DIR",
        "AIRFLOW_CONN_COPYLEAKS_ACCOUNT_STATE",
    }
    assert topology <= set(local) and topology <= set(shared)
    assert local["AIRFLOW__CORE__EXECUTOR"] == shared["AIRFLOW__CORE__EXECUTOR"]
    assert local["AIRFLOW__CELERY__RESULT_BACKEND"].startswith("db+postgresql")
    assert shared["AIRFLOW__CELERY__RESULT_BACKEND"].startswith("db+postgresql")
    assert local["AIRFLOW_CONN_IMAGE_AUDIT_WAREHOUSE"].endswith("/image_audit_warehouse")
    assert local["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].endswith("/image_audit_airflow")
    conn = json.loads(local["AIRFLOW_CONN_COPYLEAKS_DEFAULT"])
    assert conn["conn_type"] == "copyleaks"
    assert conn["extra"]["webhook_base_url"] == f"http://127.0.0.1:18080{WEBHOOK_URL_PREFIX}"
    assert conn["extra"]["api_url"] == conn["extra"]["identity_url"] == "http://127.0.0.1:18099"


def test_optional_services_stay_out_of_a_plain_up(compose):
    """Only the core stack starts with `docker compose up`; the extras are opt-in profiles."""
    services = compose["services"]
    profiled = {name: s["profiles"] for name, s in services.items() if "profiles" in s}
    assert profiled == {
        "copyleaks-emulator": ["emulator"],
        "copyleaks-receiver": ["receiver"],
        "flower": ["flower"],
    }
    receiver = services["copyleaks-receiver"]["entrypoint"]
    assert receiver[:3] == ["python", "-m", "image_audit.webhook"] and "0.0.0.0" in receiver
    assert services["flower"]["command"] == "celery flower"


def test_setup_upgrades_the_warehouse_to_the_current_revision(compose):
    """Migrations run where the deployment runs setup; plan only checks the revision."""
    init = compose["services"]["airflow-init"]
    assert init["entrypoint"].endswith("sh") and init["command"][0] == "-c"
    commands = shell_commands(init["command"][1])
    assert ["airflow", "db", "migrate"] in commands
    assert any(c[:3] == ["python", "-m", "image_audit.warehouse"] and "upgrade" in c[3:] for c in commands)


def test_no_service_moves_airflows_folders_and_each_has_the_connections(compose):
    """The DAG and the plugin are read from the image's own folders (where compose mounts them), and the
    connections every component needs are defined for every Airflow service."""
    for service in compose["services"].values():
        env = service.get("environment") or {}
        assert "AIRFLOW__CORE__DAGS_FOLDER" not in env and "AIRFLOW__CORE__PLUGINS_FOLDER" not in env
    common_env = compose["x-airflow-common"]["environment"]
    assert {"AIRFLOW_CONN_IMAGE_AUDIT_WAREHOUSE", "AIRFLOW_CONN_COPYLEAKS_ACCOUNT_STATE"} <= set(common_env)
