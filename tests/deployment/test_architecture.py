"""Dependencies point one way: dev tools -> pipeline -> provider -> libraries, and inside each the way
the tree shows (the provider's operator -> hook -> account state; the pipeline's Airflow-facing pieces ->
reporting -> planning -> warehouse -> config).

The import contracts live in pyproject.toml (``[tool.importlinter]``); this runs them, finds no import
cycle between modules, checks the DAG and plugin files (not packages, so outside the contracts), and uses
the provider in an interpreter where the pipeline cannot be imported.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import sysconfig
import tomllib
from pathlib import Path

import grimp

from image_audit_dev.servers import dev_environment, free_port
from tests.support import ROOT
from tests.support.emulator import copyleaks_connection

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
    contracts = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    assert f"{len(contracts)} kept, 0 broken" in completed.stdout, completed.stdout[-3000:]


#: The packages of the project: the provider, the pipeline and the development tools.
PACKAGES = ("copyleaks_provider", "image_audit", "image_audit_dev", "copyleaks_emulator")


def import_cycles(graph) -> list[list[str]]:
    """The import cycles between the graph's modules: each strongly connected set of modules (Tarjan's
    algorithm, iterative), sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles = []
    for root in sorted(graph.modules):
        if root in index:
            continue
        work = [(root, iter(sorted(graph.find_modules_directly_imported_by(root))))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            module, imported = work[-1]
            for other in imported:
                if other not in index:
                    index[other] = low[other] = len(index)
                    stack.append(other)
                    on_stack.add(other)
                    work.append((other, iter(sorted(graph.find_modules_directly_imported_by(other)))))
                    break
                if other in on_stack:
                    low[module] = min(low[module], index[other])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[module])
                if low[module] == index[module]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == module:
                            break
                    if len(component) > 1:
                        cycles.append(sorted(component))
    return sorted(cycles)


def test_no_import_cycle_between_modules():
    """No module imports (at run time, through any chain) a module that imports it back, a package's
    ``__init__`` included: the tree is a hierarchy, no module exists to break a cycle."""
    graph = grimp.build_graph(*PACKAGES, exclude_type_checking_imports=True)
    assert import_cycles(graph) == []


def test_the_cycle_finder_finds_cycles():
    graph = grimp.ImportGraph()
    for module in ("a", "a.one", "a.two", "a.three", "b"):
        graph.add_module(module)
    graph.add_import(importer="a.one", imported="a.two")
    graph.add_import(importer="a.two", imported="a.three")
    graph.add_import(importer="a.three", imported="a.one")
    graph.add_import(importer="a.one", imported="b")
    graph.add_import(importer="b", imported="b")
    assert import_cycles(graph) == [["a.one", "a.three", "a.two"]]


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
            str(ROOT / "tests" / "support" / "provider_alone.py"),
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


def test_nothing_imports_the_plugin():
    """The plugin wires the pipeline into Airflow; Airflow loads it, no code of the project imports it."""
    plugins = {path.stem for path in (ROOT / "plugins").glob("*.py")}
    assert plugins
    for folder in ("include", "providers", "dev", "dags", "plugins", "bench"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            imported = {m.split(".")[0] for m in _imported_modules(path)}
            assert not imported & (plugins | {"plugins"}), f"{path.relative_to(ROOT)} imports the plugin"
