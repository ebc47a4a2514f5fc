"""What every benchmark shares: throw-away warehouses, server processes, figures and their printing."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from image_audit_dev import servers
from image_audit_dev.servers import free_port

ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = ROOT / "var" / "bench"
#: Where ``./run bench --record`` keeps each benchmark's JSON for the docs (docs/benchmarks.md renders
#: one table per file at build time; docs/hooks.py).
RECORDED_DIR = ROOT / "docs" / "benchmarks" / "results"
#: How this run was asked for (``bench/__main__.py`` sets it): saved with every benchmark's figures.
RUN_OPTIONS: dict = {"quick": False, "record": False}
#: The emulator of the overhead benchmarks (submit, e2e): the account's request limit lifted, as for an
#: enterprise contract, so they measure our costs rather than Copyleaks' 10 requests/s. The account
#: budget has its own benchmark (``account``: bench/account_rate.py), with the documented limits on.
EMULATOR_ARGS = ["copyleaks_emulator", "--log-level", "warning", "--api-requests-per-second", "0"]


def postgres_admin_url() -> str | None:
    """The PostgreSQL server the PostgreSQL figures use, if any (the same variable as the tests)."""
    return os.environ.get("IMAGE_AUDIT_BENCH_POSTGRES_URL") or os.environ.get("IMAGE_AUDIT_TEST_POSTGRES_URL")


def redis_url() -> str | None:
    """The Redis server the cluster runs use as the Celery broker, if any (the same variable as the tests)."""
    return os.environ.get("IMAGE_AUDIT_BENCH_REDIS_URL") or os.environ.get("IMAGE_AUDIT_TEST_REDIS_URL")


@contextlib.contextmanager
def warehouse(backend: str, workdir: Path) -> Iterator[str]:
    """A new, empty, migrated warehouse URL on ``sqlite`` or ``postgres``; dropped afterwards."""
    from image_audit.warehouse.engine import dispose_engines, get_engine
    from image_audit.warehouse.schema import migrate

    name = f"image_audit_bench_{uuid.uuid4().hex[:10]}"
    if backend == "sqlite":
        url = f"sqlite:///{workdir / f'{name}.db'}"
        admin = None
    else:
        admin_url = make_url(postgres_admin_url()).set(drivername="postgresql+psycopg2")
        admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        url = make_url(postgres_admin_url()).set(database=name).render_as_string(hide_password=False)
    migrate(get_engine(url))
    try:
        yield url
    finally:
        dispose_engines()
        if admin is not None:
            with admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            admin.dispose()


@contextlib.contextmanager
def server_process(
    module_args: list[str], env: dict[str, str] | None = None, niceness: int = 0
) -> Iterator[str]:
    """``python -m <module_args> --port P`` in its own process (at ``niceness``), until its /health
    answers; yields its URL."""
    port = free_port()
    command = servers.niced([sys.executable, "-m", *module_args, "--port", str(port)], niceness)
    with servers.server_process(command, port=port, env={**os.environ, **(env or {})}) as base:
        yield base


def run_json(module_args: list[str], env: dict[str, str] | None = None) -> dict:
    """Run ``python -m <module_args>`` in its own process and parse the JSON it prints last."""
    completed = subprocess.run(
        [sys.executable, "-m", *module_args],
        env=servers.dev_environment({**os.environ, **(env or {})}),
        capture_output=True,
        text=True,
        check=False,
    )
    if completed.returncode:
        raise RuntimeError(f"{' '.join(module_args)} failed: {completed.stderr[-3000:]}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


def machine() -> dict:
    """Where the figures were taken (they are ratios, but the reader wants to know)."""
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    memory_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(memory_gib, 1),
        "python": platform.python_version(),
        "taken_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def percentile(values: list[float], q: float) -> float:
    """The ``q`` quantile (0..1) by nearest rank; values need not be sorted."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


def report(name: str, figures: dict, targets: list[tuple[str, bool]]) -> dict:
    """Print a benchmark's figures and its targets (met or not); save them as ``var/bench/<name>.json``,
    and with ``--record`` as ``docs/benchmarks/results/<name>.json`` too (the docs' tables)."""
    print(f"\n== {name} ==")
    for key, value in figures.items():
        print(f"  {key}: {value}")
    for target, met in targets:
        print(f"  [{'met' if met else 'NOT MET'}] {target}")
    saved = {
        "benchmark": name,
        "machine": machine(),
        "quick": bool(RUN_OPTIONS.get("quick")),
        "figures": figures,
        "targets": dict(targets),
    }
    text = json.dumps(saved, indent=2, default=str) + "\n"
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    (RESULTS_DIR / f"{name}.json").write_text(text)
    if RUN_OPTIONS.get("record"):
        RECORDED_DIR.mkdir(parents=True, exist_ok=True)
        (RECORDED_DIR / f"{name}.json").write_text(text)
        print(f"  recorded for the docs: {(RECORDED_DIR / f'{name}.json').relative_to(ROOT)}")
    return saved
