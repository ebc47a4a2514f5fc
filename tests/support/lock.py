"""Reading the hash-locked requirements files (``./run lock`` writes them with uv)."""

from __future__ import annotations

import re
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name


def locked(lock: Path) -> dict[str, tuple[Requirement, list[str]]]:
    """Requirement and hashes of each entry of a uv/pip-compile lock file."""
    entries: dict[str, tuple[Requirement, list[str]]] = {}
    for block in re.split(r"\n(?=[A-Za-z0-9])", lock.read_text()):
        first, *rest = block.split("\n")
        if first.startswith("#") or not first.strip():
            continue
        requirement = Requirement(first.rstrip(" \\"))
        hashes = re.findall(r"--hash=sha256:([0-9a-f]{64})", "\n".join(rest))
        entries[canonicalize_name(requirement.name)] = (requirement, hashes)
    return entries
