"""The install is locked: every package of the runtime and test trees pinned with hashes, the lock in
step with the top-level requirements, and the environment the tests run in installed from it."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.support import ROOT
from tests.support.lock import locked as read_lock


def _pins(requirements: Path) -> dict[str, str]:
    pins = {}
    for line in requirements.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line and not line.startswith("-r"):
            requirement = Requirement(line)
            pins[canonicalize_name(requirement.name)] = str(requirement.specifier).removeprefix("==")
    return pins


@pytest.mark.parametrize("name", ["requirements", "requirements-dev"])
def test_every_entry_is_pinned_with_hashes_and_matches_the_top_level_pins(name):
    locked = read_lock(ROOT / f"{name}.lock")
    assert len(locked) > 150  # the whole tree, not the top level
    for package, (requirement, hashes) in locked.items():
        assert str(requirement.specifier).startswith("=="), package
        assert hashes, f"{package} has no hash"
    pins = _pins(ROOT / "requirements.txt") | (_pins(ROOT / f"{name}.txt") if name != "requirements" else {})
    for package, pinned in pins.items():
        assert package in locked, f"{package} is not in {name}.lock: run ./run lock"
        assert str(locked[package][0].specifier) == f"=={pinned}", f"{name}.lock is stale: run ./run lock"


def test_the_test_environment_is_installed_from_the_lock():
    """What ./run test installs is what the lock says, to the version (for this platform's entries)."""
    wrong = {}
    for package, (requirement, _) in read_lock(ROOT / "requirements-dev.lock").items():
        if requirement.marker is not None and not requirement.marker.evaluate():
            continue
        pinned = str(requirement.specifier).removeprefix("==")
        try:
            installed = version(package)
        except PackageNotFoundError:
            installed = None
        if installed != pinned:
            wrong[package] = (pinned, installed)
    assert wrong == {}
