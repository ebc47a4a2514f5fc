"""``python -S tests/support/provider_alone.py IMAGE_URL RECEIVER_PORT``: the provider used on its own.

Run without ``site`` and with only ``providers/copyleaks/`` and the libraries on ``PYTHONPATH``: the venv's
editable install of the pipeline is then not importable, as in a deployment that installed the
provider alone. It serves the provider's receiver with an in-memory sink, submits one image through
the hook (connection from ``AIRFLOW_CONN_COPYLEAKS_DEFAULT``), waits for its result and prints JSON.
"""

from __future__ import annotations

import importlib.util
import json
import socket
import sys
import threading

import uvicorn

from copyleaks_provider.hooks.copyleaks import CopyleaksHook
from copyleaks_provider.webhooks.callbacks import InMemoryCallbackSink
from copyleaks_provider.webhooks.receiver import create_receiver_app


class _SignallingSink(InMemoryCallbackSink):
    """The in-memory sink, setting ``stored`` once a scan's result is kept."""

    def __init__(self) -> None:
        super().__init__()
        self.stored = threading.Event()

    async def store(self, callback):
        outcome = await super().store(callback)
        if self.results:
            self.stored.set()
        return outcome


def main(image_url: str, port: int) -> dict:
    sink = _SignallingSink()
    # Listening before the server starts: a callback arriving first waits in the backlog, not refused.
    listening = socket.create_server(("127.0.0.1", port))
    server = uvicorn.Server(uvicorn.Config(create_receiver_app(sink), log_level="warning"))
    serving = threading.Thread(target=server.run, kwargs={"sockets": [listening]}, daemon=True)
    serving.start()
    hook = CopyleaksHook()
    hook.submit_image(hook.build_submit_request("alone-1", image_url, "alone.png", sandbox=True))
    sink.stored.wait(timeout=30)
    server.should_exit = True
    serving.join(timeout=30)  # a daemon thread still running at interpreter exit can crash it
    result = sink.results.get("alone-1")
    return {
        "pipeline_importable": importlib.util.find_spec("image_audit") is not None,
        "dev_tools_importable": importlib.util.find_spec("copyleaks_emulator") is not None,
        "loaded": sorted(
            {m.split(".")[0] for m in sys.modules if m.startswith(("image_audit", "copyleaks_"))}
        ),
        "result_model": result.body.model if result else None,
    }


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1], int(sys.argv[2]))))
