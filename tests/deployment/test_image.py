"""The production image, read for what it does (no Docker here): the locked Airflow as its base, the lock
installed with hashes, then exactly the two distributions (the provider and the pipeline) in editable
mode from the very paths docker-compose.yaml mounts, and nothing of the development tools."""

from __future__ import annotations

import posixpath
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.support import ROOT
from tests.support.dockerfile import (
    Instruction,
    base_image,
    copies,
    environment,
    instructions,
    pip_installs,
)
from tests.support.lock import locked

#: The apache/airflow images' home: DAGs and plugins are read from its dags/ and plugins/.
AIRFLOW_IMAGE_HOME = "/opt/airflow"
#: What the project installs: the provider (a distribution of its own) and the pipeline.
DISTRIBUTIONS = {"airflow-provider-copyleaks", "image-audit"}


@pytest.fixture(scope="module")
def steps() -> list[Instruction]:
    return instructions(ROOT / "Dockerfile")


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yaml").read_text())


def _pyproject(folder: Path) -> dict:
    return tomllib.loads((folder / "pyproject.toml").read_text())


def _host_folder(steps: list[Instruction], image_path: str) -> Path:
    """The folder of this project that the image holds at ``image_path`` (copied whole, or a project whose
    pyproject.toml was copied there)."""
    for copy in copies(steps):
        for source in copy.sources:
            if copy.target == image_path:
                return ROOT / source
            if copy.target == posixpath.join(image_path, Path(source).name) and Path(source).name == (
                "pyproject.toml"
            ):
                return (ROOT / source).parent
    raise AssertionError(f"the image holds nothing of the project at {image_path}")


def _copied_to(steps: list[Instruction]) -> dict[str, str]:
    """Host path (relative to the project) -> where the image has it."""
    return {source: copy.target for copy in copies(steps) for source in copy.sources}


def _airflow_home(steps: list[Instruction]) -> str:
    return environment(steps).get("AIRFLOW_HOME", AIRFLOW_IMAGE_HOME)


def test_the_base_image_is_the_locked_airflow_on_the_projects_python(steps):
    repository, _, tag = base_image(steps).partition(":")
    assert repository == "apache/airflow"
    airflow = locked(ROOT / "requirements.lock")["apache-airflow"][0]
    version, _, python = tag.partition("-python")
    assert f"=={version}" == str(airflow.specifier), "the image's Airflow is the lock's"
    for folder in (ROOT, ROOT / "providers" / "copyleaks"):
        assert python in Requirement(f"python{_pyproject(folder)['project']['requires-python']}").specifier


def test_the_image_installs_the_lock_with_hashes_then_exactly_the_two_distributions(steps):
    installs = pip_installs(steps)
    in_image = {target: source for source, target in _copied_to(steps).items()}
    lock_installs = [i for i in installs if i.requirement_files]
    project_installs = [i for i in installs if i.editables]
    assert installs == [*lock_installs, *project_installs], "the lock first, then the project, nothing else"

    [lock] = lock_installs
    assert [in_image[path] for path in lock.requirement_files] == ["requirements.lock"]
    assert "--require-hashes" in lock.flags and not (lock.packages or lock.editables or lock.other)

    [project] = project_installs
    assert "--no-deps" in project.flags, "every dependency comes from the lock"
    assert not (project.packages or project.requirement_files or project.other)
    folders = [_host_folder(steps, path) for path in project.editables]
    assert {_pyproject(folder)["project"]["name"] for folder in folders} == DISTRIBUTIONS
    assert len(folders) == len(DISTRIBUTIONS)


def test_the_lock_holds_every_dependency_of_the_two_distributions():
    """They are installed with ``--no-deps``: the lock must bring what they declare, at versions they take."""
    lock = locked(ROOT / "requirements.lock")
    for folder in (ROOT, ROOT / "providers" / "copyleaks"):
        for line in _pyproject(folder)["project"].get("dependencies", []):
            wanted = Requirement(line)
            name = canonicalize_name(wanted.name)
            assert name in lock, f"{wanted.name} ({folder.name}) is not in requirements.lock"
            pinned = str(lock[name][0].specifier).removeprefix("==")
            assert wanted.specifier.contains(pinned, prereleases=True), (line, pinned)


def test_the_installed_packages_and_airflows_folders_are_in_the_image(steps):
    """The editable installs' packages are where their projects say (the pipeline's under ``include``),
    and the DAG and the plugin are in Airflow's own folders."""
    copied = _copied_to(steps)
    [project] = [i for i in pip_installs(steps) if i.editables]
    for path in project.editables:
        folder = _host_folder(steps, path)
        find = _pyproject(folder).get("tool", {}).get("setuptools", {}).get("packages", {}).get("find", {})
        for where in find.get("where", ["."]):
            package_dir = posixpath.normpath(posixpath.join(path, where))
            source = (folder / where).resolve().relative_to(ROOT).as_posix()
            assert copied.get(source) == package_dir, f"{source} is not at {package_dir}"
    home = _airflow_home(steps)
    assert copied["dags"] == f"{home}/dags" and copied["plugins"] == f"{home}/plugins"


def test_the_image_copies_only_the_installed_code(steps):
    """What the wheels hold, the lock, the DAG and the plugin: never dev/ (the emulator, the demo...)."""
    copied = set(_copied_to(steps))
    assert copied == {
        "requirements.lock",
        "pyproject.toml",
        "providers/copyleaks",
        "include",
        "plugins",
        "dags",
    }
    assert not any(source == "dev" or source.startswith(("dev/", ".")) for source in copied)


def test_compose_mounts_the_code_at_the_paths_the_image_installs_it_from(steps, compose):
    """A mounted ./include or ./providers/copyleaks is what runs (the editable installs point there, no
    copy in site-packages shadows it), and so are a mounted ./dags and ./plugins (Airflow's folders)."""
    mounts = {}
    for volume in compose["x-airflow-common"]["volumes"]:
        source, _, rest = volume.partition(":")
        if source.startswith("./"):
            mounts[source.removeprefix("./")] = rest.split(":")[0]
    copied = _copied_to(steps)
    [project] = [i for i in pip_installs(steps) if i.editables]
    code = {"dags", "plugins"}
    for path in project.editables:
        folder = _host_folder(steps, path)
        find = _pyproject(folder).get("tool", {}).get("setuptools", {}).get("packages", {}).get("find", {})
        for where in find.get("where", ["."]):
            code.add((folder / where).resolve().relative_to(ROOT).as_posix())
    assert code == {"dags", "plugins", "include", "providers/copyleaks"}
    for source in sorted(code):
        assert mounts.get(source) == copied[source], f"./{source} is not mounted where the image has it"
