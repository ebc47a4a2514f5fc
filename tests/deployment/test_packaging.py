"""What ships: the wheels (`pip install .`, and `pip install ./providers/copyleaks`, the provider being a
distribution of its own) hold the pipeline's and the provider's packages, never the development tools
under dev/ (the Copyleaks emulator, the demo, the local cluster, their helpers); only the compose
emulator sees dev/. The production image: test_image.py."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import yaml

from tests.support import ROOT

DEV_PACKAGES = ("copyleaks_emulator", "image_audit_dev")
#: Where the development tools lived before they moved to dev/: none may come back into a package.
DEV_MODULES = ("demo", "cluster", "sample_catalog", "servers")


def _build_wheels(tmp_path: Path) -> dict[str, list[str]]:
    """The file names of each wheel the project builds (the root project's and the provider's), built
    offline with the installed setuptools from a copy of the tree that
    includes dev/ (so leaving it out is the packaging's doing, not the copy's)."""
    source = tmp_path / "source"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", "build")
    source.mkdir()
    shutil.copy2(ROOT / "pyproject.toml", source)
    for folder in ("providers", "plugins", "include", "dev", "dags"):
        shutil.copytree(ROOT / folder, source / folder, ignore=ignore)
    projects = [source, source / "providers" / "copyleaks"]
    out = tmp_path / "wheels"
    completed = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
         "--quiet", "--wheel-dir", str(out), *(str(p) for p in projects)],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    wheels = {}
    for path in sorted(out.glob("*.whl")):
        with zipfile.ZipFile(path) as wheel:
            wheels[path.name] = wheel.namelist()
    return wheels


def test_the_wheels_hold_the_pipeline_and_the_provider_and_no_development_tool(tmp_path):
    wheels = _build_wheels(tmp_path)
    assert any(name.startswith("image_audit-") for name in wheels)
    names = [n for files in wheels.values() for n in files]
    top_level = {name.split("/", 1)[0] for name in names if "/" in name and ".dist-info/" not in name}
    assert top_level == {"copyleaks_provider", "image_audit"}
    assert {
        "copyleaks_provider/__init__.py",
        "copyleaks_provider/hooks/copyleaks.py",
        "image_audit/__init__.py",
        "image_audit/warehouse/__init__.py",
        "image_audit/reporting/templates/report.html.j2",
        # The warehouse's revisions, run from the installed package (no alembic.ini).
        "image_audit/warehouse/migrations/env.py",
        "image_audit/warehouse/migrations/versions/0001_initial.py",
        "image_audit/warehouse/migrations/versions/0002_scan_state_run_index.py",
    } <= set(names)
    moved = {f"image_audit/{module}.py" for module in DEV_MODULES}
    assert [n for n in names if n.startswith(DEV_PACKAGES) or n in moved] == []


def test_only_the_compose_emulator_sees_dev_mounted_read_only():
    """The emulator profile runs the production image with the emulator's code mounted from ./dev; no
    other service sees dev/."""
    compose = yaml.safe_load((ROOT / "docker-compose.yaml").read_text())
    services = compose["services"]
    emulator = services["copyleaks-emulator"]
    assert emulator["entrypoint"][:3] == ["python", "-m", "copyleaks_emulator"]
    (mount,) = [v for v in emulator["volumes"] if v.startswith("./dev:")]
    _, target, mode = mount.split(":")
    assert mode == "ro" and emulator["environment"]["PYTHONPATH"] == target
    for name, service in services.items():
        if name == "copyleaks-emulator":
            continue
        assert not any(str(v).startswith("./dev") for v in service.get("volumes", [])), name
        assert "PYTHONPATH" not in (service.get("environment") or {}), name
