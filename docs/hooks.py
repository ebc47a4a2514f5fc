"""MkDocs hooks (``hooks:`` in mkdocs.yml): what the docs show that the code already says, rendered
from the code at build time, and the checks that keep the rest of the pages true.

A marker on a line of its own, ``<!-- generated: NAME [ARGUMENT] -->``, is replaced by:

- ``lifecycle-diagram``: the scan lifecycle, ``image_audit.warehouse.lifecycle.mermaid()``, in a
  ``mermaid`` fence (pymdownx.superfences' custom fence; Material draws it);
- ``lifecycle-transitions``: every transition and the module that makes it (``TRANSITIONS``);
- ``import-contracts``: the import contracts of pyproject.toml's ``[tool.importlinter]``;
- ``emulator-settings``: the emulator's settings (``EmulatorSettings``): flag, default, meaning, and
  whether ``PATCH /admin/faults`` changes it at runtime;
- ``benchmark NAME``: a table of ``docs/benchmarks/results/NAME.json``, the JSON ``./run bench --record``
  writes, or a line saying the benchmark has not been recorded yet.

Each check logs a warning, which fails ``mkdocs build --strict`` (``./run test``):

- a repository path or a module in a code span (`` `include/...` ``, `` `image_audit.x.y` ``) that does
  not exist, or a name the module does not hold;
- a DAG Param, a field of the Copyleaks connection or an ``IMAGE_AUDIT_*`` environment variable that the
  code reads and configuration.md does not name;
- a benchmark recorded from a ``--quick`` run (smoke sizes are not figures);
- a marker this module does not know.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import logging
import re
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = ROOT / "docs" / "benchmarks" / "results"
log = logging.getLogger("mkdocs.hooks.image_audit")

MARKER = re.compile(r"^<!-- generated: ([a-z-]+)(?: ([\w-]+))? -->[ \t]*$", re.MULTILINE)
#: The ``./run bench`` arguments that record each benchmark's file.
BENCH_COMMANDS = {"e2e_large": "e2e --large"}
#: Where each top-level package's code lives.
PACKAGE_DIRS = {
    "image_audit": ROOT / "include" / "image_audit",
    "copyleaks_provider": ROOT / "providers" / "copyleaks" / "copyleaks_provider",
    "image_audit_dev": ROOT / "dev" / "image_audit_dev",
    "copyleaks_emulator": ROOT / "dev" / "copyleaks_emulator",
    "bench": ROOT / "bench",
}
CODE_SPAN = re.compile(r"(?<!`)`([^`\n]+)`(?!`)")
REPO_PATH = re.compile(r"(?:include|providers|plugins|dags|dev|bench|tests|docs)/[\w./-]*")
MODULE_PATH = re.compile(rf"(?:{'|'.join(PACKAGE_DIRS)})(?:\.\w+)*")
#: Where the environment variables the configuration page must name are read.
CONFIG_SOURCES = ("include", "providers", "plugins", "dags", "dev", "bench", "tests")
CONFIG_FILES = ("run", ".ci/run", "docker-compose.yaml", "Dockerfile")
ENV_VAR = re.compile(r"\bIMAGE_AUDIT_[A-Z0-9][A-Z0-9_]*")


def on_page_markdown(markdown: str, page, **_) -> str:
    source = page.file.src_uri
    rendered = MARKER.sub(lambda match: _render(match.group(1), match.group(2), source), markdown)
    _check_code_spans(_without_fences(rendered), source)
    if source == "configuration.md":
        _check_configuration(rendered)
    return rendered


# --- what is rendered ---------------------------------------------------------------------------------
def _render(name: str, argument: str | None, page: str) -> str:
    if name == "lifecycle-diagram":
        return f"```mermaid\n{_lifecycle().mermaid()}\n```"
    if name == "lifecycle-transitions":
        return _transitions_table()
    if name == "import-contracts":
        return _contracts_table()
    if name == "emulator-settings":
        return _emulator_settings_table()
    if name == "benchmark" and argument:
        return render_benchmark(argument)
    log.warning("%s: unknown marker <!-- generated: %s %s -->", page, name, argument or "")
    return f"<!-- generated: {name} {argument or ''} -->"


def _lifecycle():
    if str(ROOT / "include") not in sys.path:  # the docs may be built where the pipeline is not installed
        sys.path.insert(0, str(ROOT / "include"))
    from image_audit.warehouse import lifecycle

    return lifecycle


def _transitions_table() -> str:
    rows = ["| from | to | on | decided in |", "| --- | --- | --- | --- |"]
    for t in _lifecycle().TRANSITIONS:
        source = "(created)" if t.source is None else f"`{t.source.value}`"
        rows.append(f"| {source} | `{t.target.value}` | {_cell(t.event)} | `{t.module}` |")
    return "\n".join(rows)


def _contracts_table() -> str:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    rows = ["| contract | rule |", "| --- | --- |"]
    for contract in config["contracts"]:
        if contract["type"] == "layers":
            rule = "layers, each may import only those after it: " + " → ".join(
                f"`{layer}`" for layer in contract["layers"]
            )
        elif contract["type"] == "forbidden":
            sources = ", ".join(f"`{m}`" for m in contract["source_modules"])
            forbidden = ", ".join(f"`{m}`" for m in contract["forbidden_modules"])
            rule = f"{sources} may not import {forbidden}"
        else:
            rule = f"`{contract['type']}`"
        rows.append(f"| {_cell(contract['name'])} | {rule} |")
    return "\n".join(rows)


def _emulator_settings_table() -> str:
    # The settings module alone (pydantic only), not the package, whose app imports the web stack.
    path = PACKAGE_DIRS["copyleaks_emulator"] / "settings.py"
    spec = importlib.util.spec_from_file_location("_copyleaks_emulator_settings", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    rows = ["| setting | flag | default | meaning | at runtime |", "| --- | --- | --- | --- | --- |"]
    for name, field in module.EmulatorSettings.model_fields.items():
        if name == "accounts":
            flag = "`--account EMAIL:KEY` (repeatable)"
            default = ", ".join(f"`{email}:{key}`" for email, key in field.default_factory().items())
        else:
            dashed = name.replace("_", "-")
            if field.annotation is bool:
                flag = f"`--{dashed}`, `--no-{dashed}`"
            else:
                flag = f"`--{dashed}`" if field.annotation in (int, float) else "(none)"
            default = f"`{field.default}`"
        runtime = "yes" if name in module.FAULT_KNOBS else ""
        rows.append(f"| `{name}` | {flag} | {default} | {_cell(field.description or '')} | {runtime} |")
    return "\n".join(rows)


def render_benchmark(name: str, results_dir: Path = RESULTS_DIR) -> str:
    """The Markdown of benchmark ``name``'s recorded figures (a public function: a test may call it)."""
    path = results_dir / f"{name}.json"
    command = f"./run bench {BENCH_COMMANDS.get(name, name)} --record"
    if not path.exists():
        return f"*Not recorded yet: `{command}` records it.*"
    saved = json.loads(path.read_text())
    machine = saved.get("machine", {})
    lines = []
    if saved.get("quick"):
        log.warning("%s was recorded by a --quick run (smoke sizes): delete it, or record a full run", path)
        lines += ['!!! warning "A smoke run"', "    Recorded with `--quick`: small sizes, not figures.", ""]
    taken = machine.get("taken_at", "")
    when = f"{taken[:10]} {taken[11:16]} UTC" if len(taken) >= 16 else "at an unknown time"
    lines += [
        f"Recorded {when} on {machine.get('cpu', 'an unnamed CPU')}, "
        f"{machine.get('cores', '?')} cores, {machine.get('memory_gib', '?')} GiB, "
        f"Python {machine.get('python', '?')} (`{command}`).",
        "",
        "| figure | value |",
        "| --- | --- |",
    ]
    lines += [f"| {_cell(key)} | {_cell(_value(value))} |" for key, value in saved.get("figures", {}).items()]
    targets = saved.get("targets", {})
    if targets:
        lines += ["", "| target | result |", "| --- | --- |"]
        for target, met in targets.items():
            lines.append(f"| {_cell(target)} | {'met' if met else '**not met**'} |")
    return "\n".join(lines)


def _value(value) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, dict):
        return ", ".join(f"{k}: {_value(v)}" for k, v in value.items()) or "none"
    if isinstance(value, list):
        return ", ".join(_value(v) for v in value) or "none"
    return str(value)


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


# --- what is checked ----------------------------------------------------------------------------------
def _without_fences(markdown: str) -> str:
    """The page without its fenced code blocks (their commands are tried by hand, not resolved here)."""
    return re.sub(r"^(```|~~~).*?^\1[ \t]*$", "", markdown, flags=re.MULTILINE | re.DOTALL)


def _check_code_spans(markdown: str, page: str) -> None:
    for span in {match.group(1).strip() for match in CODE_SPAN.finditer(markdown)}:
        if REPO_PATH.fullmatch(span):
            if not (ROOT / span).exists():
                log.warning("%s names %s, which does not exist", page, span)
        elif MODULE_PATH.fullmatch(span) and (problem := _module_problem(span)):
            log.warning("%s names %s: %s", page, span, problem)


def _module_problem(dotted: str) -> str | None:
    """Why ``dotted`` (a module, or a name in one) is not in the tree; None when it is."""
    top, *parts = dotted.split(".")
    where, module = PACKAGE_DIRS[top], PACKAGE_DIRS[top] / "__init__.py"
    for i, part in enumerate(parts):
        if (where / part).is_dir():
            where, module = where / part, where / part / "__init__.py"
        elif (where / f"{part}.py").exists():
            module, rest = where / f"{part}.py", parts[i + 1 :]
            break
        else:
            rest = parts[i:]
            break
    else:
        rest = []
    if not module.exists():
        return f"no module {module.relative_to(ROOT)}"
    if rest and not re.search(rf"\b{re.escape(rest[0])}\b", module.read_text()):
        return f"{module.relative_to(ROOT)} has no {rest[0]}"
    return None


def _check_configuration(markdown: str) -> None:
    named = {match.group(1).strip() for match in CODE_SPAN.finditer(markdown)}
    wanted = {
        "DAG Param": _dag_params(),
        "Copyleaks connection field": _connection_fields(),
        "environment variable": _environment_variables(),
    }
    for kind, names in wanted.items():
        for name, where in sorted(names.items()):
            if name not in named:
                log.warning("configuration.md does not name the %s `%s` (found in %s)", kind, name, where)


def _dag_params() -> dict[str, str]:
    path = ROOT / "dags" / "image_catalog_audit.py"
    params = {}
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.keyword) and node.arg == "params" and isinstance(node.value, ast.Dict):
            for key in node.value.keys:
                if isinstance(key, ast.Constant):
                    params[key.value] = "dags/image_catalog_audit.py"
    return params


def _connection_fields() -> dict[str, str]:
    where = "providers/copyleaks/copyleaks_provider/get_provider_info.py"
    spec = importlib.util.spec_from_file_location("_copyleaks_provider_info", ROOT / where)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    fields = {}
    for connection_type in module.get_provider_info()["connection-types"]:
        fields.update(dict.fromkeys(connection_type.get("conn-fields", {}), where))
    return fields


def _environment_variables() -> dict[str, str]:
    files = [ROOT / name for name in CONFIG_FILES]
    for folder in CONFIG_SOURCES:
        files += [p for p in (ROOT / folder).rglob("*") if p.suffix in (".py", ".env", ".yaml", ".example")]
    files += list((ROOT / "compose").glob("*"))
    found: dict[str, str] = {}
    for path in sorted(files):
        if path.is_file() and "__pycache__" not in path.parts:
            for name in ENV_VAR.findall(path.read_text(errors="replace")):
                found.setdefault(name, str(path.relative_to(ROOT)))
    return found
