"""Run a server on a real port: an ASGI app (the emulator, the receiver) under uvicorn in a background
thread, or a server command (``python -m ...``, ``airflow api-server``) in a process of its own.

Used by the demo, the tests and the benchmarks, so all of them talk real HTTP to real servers.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import httpx
import uvicorn

#: dev/: the development tools' own folder, never installed.
DEV_DIR = Path(__file__).resolve().parents[1]
#: The Copyleaks emulator's priority wherever it times account limits (the cluster, the account tests
#: and bench): above the processes it is timing, as Copyleaks' servers do not share our CPUs. Its event
#: loop is the clock its limits count arrivals by: descheduled behind our own processes, it would stamp
#: a queue of requests as one burst. Raising a priority needs root; elsewhere ``nice`` says it cannot
#: and runs the emulator at the normal priority.
SERVICE_NICENESS = -10


def niced(command: list[str], niceness: int) -> list[str]:
    """``command`` run by ``nice -n niceness`` (unchanged at 0)."""
    return ["nice", "-n", str(niceness), *command] if niceness else command


def dev_environment(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """``env`` (default: this process's) with dev/ first on PYTHONPATH, so a process started with it
    (``python -m copyleaks_emulator``) imports the development tools, which are never installed."""
    env = dict(os.environ if env is None else env)
    paths = [path for path in env.get("PYTHONPATH", "").split(os.pathsep) if path]
    if str(DEV_DIR) not in paths:
        env["PYTHONPATH"] = os.pathsep.join([str(DEV_DIR), *paths])
    return env


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


class BackgroundServer:
    """``with BackgroundServer(app) as server: httpx.get(server.url + "/health")``."""

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int | None = None, **uvicorn_options):
        self.host = host
        self.port = port or free_port(host)
        options = {"log_level": "warning", "access_log": False, "lifespan": "on", **uvicorn_options}
        self._server = uvicorn.Server(uvicorn.Config(app, host=self.host, port=self.port, **options))
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 15.0) -> BackgroundServer:
        self._server.should_exit = False
        self._server.started = False
        self._thread = threading.Thread(target=self._server.run, name=f"uvicorn:{self.port}", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"server on {self.url} did not start")
            time.sleep(0.01)
        return self

    def stop(self, timeout: float = 15.0) -> None:
        if self._thread is None:
            return
        self._server.should_exit = True
        self._thread.join(timeout)
        self._thread = None

    def __enter__(self) -> BackgroundServer:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()


@contextlib.contextmanager
def server_process(
    args: list[str],
    *,
    port: int,
    health_path: str = "/health",
    env: dict[str, str] | None = None,
    log_path: Path | None = None,
    timeout: float = 60.0,
) -> Iterator[str]:
    """Run the server command ``args`` (listening on ``port``) until ``health_path`` answers 200, and
    yield its base URL; then stop its whole process group (an api-server forks workers).

    ``env`` is the process's whole environment (default: this one's), dev/ added to its PYTHONPATH
    (:func:`dev_environment`). Its output goes to ``log_path`` (a temporary file when none), whose
    tail is the error when the server does not start.
    """
    base = f"http://127.0.0.1:{port}"
    with contextlib.ExitStack() as stack:
        if log_path is None:
            log_path = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="server-"))) / "server.log"
        with log_path.open("w") as log:
            process = subprocess.Popen(
                args, env=dev_environment(env), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        try:
            deadline = time.monotonic() + timeout
            while True:
                with contextlib.suppress(httpx.HTTPError):
                    if httpx.get(base + health_path, timeout=2).status_code == 200:
                        break
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"{' '.join(args[:3])} did not start: {log_path.read_text()[-3000:]}")
                time.sleep(0.1)
            yield base
        finally:
            _stop_group(process, timeout=20)


def signal_group(process: subprocess.Popen, signum: int) -> None:
    """Send ``signum`` to the process group ``process`` leads (started with ``start_new_session``)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):  # the group has already exited
        os.killpg(process.pid, signum)


def _stop_group(process: subprocess.Popen, timeout: float) -> None:
    signal_group(process, signal.SIGTERM)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        signal_group(process, signal.SIGKILL)
        process.wait()
