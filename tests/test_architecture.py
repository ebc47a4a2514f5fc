"""Dependencies point one way: dev tools -> pipeline -> provider -> libraries.

The import contracts live in pyproject.toml (``[tool.importlinter]``); this runs them, checks the DAG
and plugin files (not packages, so outside the contracts), and uses the provider in an interpreter
where the pipeline cannot be imported.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

from image_audit_dev.servers import dev_environment, free_port
from tests.emulator_fixtures import copyleaks_connection

ROOT = Path(__file__).resolve().parents[1]
DEV_TOOLS = ("image_audit_dev", "copyleaks_emulator")


def test_the_import_contracts_hold():
    lint = Path(sys.executable).with_name("lint-imports")
    completed = subprocess.run(
        [str(lint), "--no-cache"],
        cwd=ROOT,
        env=dev_environment(dict(os.environ)),
        capture_output=True,
        text=True,
    )
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-2000:]
    assert "0 broken" in completed.stdout and "4 kept" in completed.stdout


def _imported_modules(path: Path) -> set[str]:
    modules = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            modules.add(node.module)
    return modules


def test_the_dag_and_the_plugin_import_no_dev_tools():
    files = [*sorted((ROOT / "dags").glob("*.py")), *sorted((ROOT / "plugins").glob("*.py"))]
    assert files
    for path in files:
        imported = {m.split(".")[0] for m in _imported_modules(path)}
        assert not imported & set(DEV_TOOLS), f"{path.name} imports {imported & set(DEV_TOOLS)}"


def test_the_provider_works_where_the_pipeline_is_not_installed(start_emulator, tmp_path):
    emulator = start_emulator()
    port = free_port()
    connection = copyleaks_connection(emulator, f"http://127.0.0.1:{port}", "provider-alone-secret")
    env = {
        "PATH": os.environ["PATH"],
        "AIRFLOW_HOME": str(tmp_path / "airflow"),
        "AIRFLOW_CONN_COPYLEAKS_DEFAULT": connection,
        # No site: the venv's .pth files (the pipeline's editable install) are not read.
        "PYTHONPATH": os.pathsep.join(
            [str(ROOT / "providers" / "copyleaks"), sysconfig.get_paths()["purelib"]]
        ),
    }
    completed = subprocess.run(
        [
            sys.executable,
            "-S",
            str(ROOT / "tests" / "provider_alone.py"),
            emulator.sample_url("photo.png"),
            str(port),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    outcome = json.loads(completed.stdout.strip().splitlines()[-1])
    assert outcome["pipeline_importable"] is False and outcome["dev_tools_importable"] is False
    assert outcome["loaded"] == ["copyleaks_provider"]
    assert outcome["result_model"], outcome  # the detection result reached the in-memory sink
