"""The Dockerfile read as what it does (its base image, what it copies where, what pip installs), and shell
command lines split into commands: so the deployment tests check behaviour, not the files' wording."""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass, field
from pathlib import Path

#: pip options that take a value (the next word, or ``--option=value``).
_PIP_VALUE_OPTIONS = {
    "-r": "requirement",
    "--requirement": "requirement",
    "-e": "editable",
    "--editable": "editable",
    "-c": "constraint",
    "--constraint": "constraint",
    "-i": "index",
    "--index-url": "index",
    "--extra-index-url": "index",
    "-t": "target",
    "--target": "target",
}


@dataclass(frozen=True)
class Instruction:
    keyword: str  # upper case: FROM, COPY, RUN...
    value: str  # its arguments, continuation lines joined


@dataclass(frozen=True)
class Copy:
    sources: tuple[str, ...]  # as written, without a trailing "/"
    target: str
    flags: tuple[str, ...]


@dataclass
class PipInstall:
    """One ``pip install`` command: what it names, and its flags (``--no-deps``...)."""

    requirement_files: list[str] = field(default_factory=list)
    editables: list[str] = field(default_factory=list)
    packages: list[str] = field(default_factory=list)
    flags: set[str] = field(default_factory=set)
    other: dict[str, list[str]] = field(default_factory=dict)  # constraint, index, target: values


def instructions(dockerfile: Path) -> list[Instruction]:
    """The Dockerfile's instructions in order (comments dropped, continuation lines joined)."""
    result: list[Instruction] = []
    pending = ""
    for line in dockerfile.read_text().splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        whole = pending + stripped
        pending = ""
        keyword, _, value = whole.partition(" ")
        result.append(Instruction(keyword.upper(), value.strip()))
    return result


def _words(value: str) -> list[str]:
    """An instruction's arguments: its JSON (exec) form, or shell words."""
    if value.startswith("["):
        return list(json.loads(value))
    return shlex.split(value)


def base_image(steps: list[Instruction]) -> str:
    (first,) = [s for s in steps if s.keyword == "FROM"][:1]
    return next(word for word in _words(first.value) if not word.startswith("--"))


def environment(steps: list[Instruction]) -> dict[str, str]:
    """What ``ENV`` sets (``KEY=value`` forms)."""
    env: dict[str, str] = {}
    for step in steps:
        if step.keyword == "ENV":
            for word in _words(step.value):
                key, sep, value = word.partition("=")
                if sep:
                    env[key] = value
    return env


def copies(steps: list[Instruction]) -> list[Copy]:
    """Every ``COPY`` and ``ADD``: what goes where."""
    result = []
    for step in steps:
        if step.keyword in ("COPY", "ADD"):
            words = _words(step.value)
            flags = tuple(w for w in words if w.startswith("--"))
            *sources, target = [w for w in words if not w.startswith("--")]
            result.append(Copy(tuple(s.rstrip("/") for s in sources), target.rstrip("/") or "/", flags))
    return result


def shell_commands(script: str) -> list[list[str]]:
    """The simple commands of a shell line (``a && b; c | d``: four), each as its words."""
    lexer = shlex.shlex(script, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    commands: list[list[str]] = [[]]
    for token in lexer:
        if token in ("&&", "||", ";", "|", "&"):
            commands.append([])
        else:
            commands[-1].append(token)
    return [command for command in commands if command]


def pip_installs(steps: list[Instruction]) -> list[PipInstall]:
    """Every ``pip install`` the ``RUN`` instructions make (``pip``, ``pip3``, ``python -m pip``...)."""
    installs = []
    for step in steps:
        if step.keyword != "RUN":
            continue
        for command in shell_commands(step.value):
            if command[:1] and command[0].startswith("python") and command[1:3] == ["-m", "pip"]:
                command = command[2:]
            if command[:2] not in (["pip", "install"], ["pip3", "install"]):
                continue
            installs.append(_parse_pip_install(command[2:]))
    return installs


def _parse_pip_install(words: list[str]) -> PipInstall:
    install = PipInstall()
    words = list(words)
    while words:
        word = words.pop(0)
        option, sep, inline = word.partition("=")
        if option in _PIP_VALUE_OPTIONS:
            value = inline if sep else words.pop(0)
            kind = _PIP_VALUE_OPTIONS[option]
            if kind == "requirement":
                install.requirement_files.append(value)
            elif kind == "editable":
                install.editables.append(value)
            else:
                install.other.setdefault(kind, []).append(value)
        elif word.startswith("-"):
            install.flags.add(word)
        else:
            install.packages.append(word)
    return install
