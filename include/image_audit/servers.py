"""Run an ASGI app (the emulator, the receiver) under uvicorn in a background thread, on a real port.

Used by the demo, the tests and the benchmarks, so all of them talk real HTTP to real servers.
"""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

import uvicorn


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
