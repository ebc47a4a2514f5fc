"""The account's request budget: how much of Copyleaks' limit parallel submit tasks use together.

Four processes (as four submit tasks on any workers would be) submit 250 images each through the
hook's async client, against an emulator process that enforces Copyleaks' documented account limits
(10 requests/s, 12 logins per 15 minutes). The account state (shared token and budget) is on
PostgreSQL when a server is configured, else the default SQLite file. Figures: the achieved rate over
the limit, the peak requests the emulator saw in any one second, logins, and the 429s it answered.
"""

from __future__ import annotations

import contextlib
import json
import tempfile
from collections.abc import Iterator
from pathlib import Path

import httpx
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from bench import account_submitter
from bench.common import postgres_admin_url, report, server_process
from image_audit_dev.servers import SERVICE_NICENESS

EMAIL, API_KEY = "bench@image-audit.dev", "bench-api-key"
TARGET_UTILISATION = 0.95


@contextlib.contextmanager
def state_connection(workdir: Path) -> Iterator[tuple[dict[str, str], str | None, str]]:
    """Environment naming where the account state lives: a throw-away PostgreSQL database, or none
    (the default SQLite file in the Airflow home)."""
    env = {"AIRFLOW_HOME": str(workdir / "airflow")}
    admin_url = postgres_admin_url()
    if not admin_url:
        yield env, None, "SQLite (the default, one machine)"
        return
    name = "image_audit_bench_account_state"
    admin = create_engine(
        make_url(admin_url).set(drivername="postgresql+psycopg2"), isolation_level="AUTOCOMMIT"
    )
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    env["AIRFLOW_CONN_COPYLEAKS_STATE"] = make_url(admin_url).set(database=name).render_as_string(False)
    try:
        yield env, "copyleaks_state", "PostgreSQL"
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def main(processes: int = 4, per_process: int = 250, rate: int = 10) -> dict:
    emulator_args = ["copyleaks_emulator", "--account", f"{EMAIL}:{API_KEY}", "--log-level", "warning"]
    emulator_args += ["--api-requests-per-second", str(rate)]
    with (
        tempfile.TemporaryDirectory(prefix="bench-account-") as workdir,
        state_connection(Path(workdir)) as (env, state_conn_id, store),
        server_process(["bench.bare_endpoint"]) as sink,
        server_process(emulator_args, niceness=SERVICE_NICENESS) as api,
        account_submitter.image_host() as images,
    ):
        connection = {
            "conn_type": "copyleaks",
            "login": EMAIL,
            "password": API_KEY,
            "extra": {
                "identity_url": api,
                "api_url": api,
                "webhook_base_url": sink,
                "webhook_secret": "bench",
                "account_state_conn_id": state_conn_id,
                "requests_per_second": rate,
            },
        }
        env["AIRFLOW_CONN_COPYLEAKS_DEFAULT"] = json.dumps(connection)
        outputs = account_submitter.finish(account_submitter.start(processes, per_process, images, env))
        emulator = httpx.get(f"{api}/admin/state", timeout=10).json()
    accepted = sorted(t for output in outputs for t in output["accepted"])
    achieved = (len(accepted) - 1) / (accepted[-1] - accepted[0])
    utilisation = round(achieved / rate, 3)
    share_429 = emulator["api_429"] / max(1, emulator["api_requests"])
    figures = {
        "submit processes": f"{processes} x {per_process} images",
        "account state": store,
        "account limit": f"{rate} requests/s",
        "achieved": f"{achieved:.2f} requests/s over {accepted[-1] - accepted[0]:.1f} s",
        "utilisation (achieved / limit)": utilisation,
        "peak requests in any second (emulator)": emulator["peak_requests_per_second"],
        "logins": emulator["logins"],
        "login 429s": emulator["login_429"],
        "API 429s": f"{emulator['api_429']} of {emulator['api_requests']} ({share_429:.2%})",
        "errors": {k: v for output in outputs for k, v in output["errors"].items()},
    }
    targets = [
        (f"utilisation >= {TARGET_UTILISATION}", utilisation >= TARGET_UTILISATION),
        (f"never above {rate} requests in any second", emulator["peak_requests_per_second"] <= rate),
        ("one login, 0 login 429s", emulator["logins"] == 1 and emulator["login_429"] == 0),
        ("API 429s <= 1%", share_429 <= 0.01),
        ("every image accepted", len(accepted) == processes * per_process),
    ]
    return report("account", figures, targets)


if __name__ == "__main__":
    main()
