"""Where the alerts' tests receive them: a real SMTP server on loopback (``aiosmtpd``), another notifier
that records what it is given, and what a received message reads as.

A fixture plugin (``tests/conftest.py``): ``smtp`` is the server with the ``smtp_default`` connection to
it and the UI's base URL set in the environment, as Airflow reads them.
"""

from __future__ import annotations

import html
import json
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from email import message_from_bytes, policy
from typing import ClassVar

import pytest
from airflow.sdk import BaseNotifier

from image_audit_dev.servers import free_port

BASE_URL = "https://airflow.example.test"
SENDER, RECIPIENT, OTHER = "image-audit@example.test", "analysts@example.test", "ops@example.test"


class SmtpCollector:
    """The SMTP server's handler: keeps each message, then answers 250. The sender's ``sendmail`` returns
    only on that answer, so once a notifier has returned, every message it sent is in ``messages``."""

    def __init__(self):
        self.messages = []
        self.connection: dict = {}  # the ``smtp`` connection to the server, once it runs
        self._received = threading.Condition()

    async def handle_DATA(self, server, session, envelope):
        message = message_from_bytes(envelope.content, policy=policy.default)
        with self._received:
            self.messages.append((envelope.rcpt_tos, message))
            self._received.notify_all()
        return "250 Message accepted for delivery"

    def wait_for(self, n: int, timeout: float = 10.0) -> list:
        """The messages once there are ``n`` of them (or the timeout passed)."""
        with self._received:
            self._received.wait_for(lambda: len(self.messages) >= n, timeout)
            return list(self.messages)


@contextmanager
def smtp_server() -> Iterator[SmtpCollector]:
    """A real SMTP server on a free loopback port, for as long as the block runs; its collector's
    ``connection`` is an Airflow ``smtp`` connection to it (no TLS, no SSL, the sender as ``from_email``)."""
    from aiosmtpd.controller import Controller

    handler = SmtpCollector()
    controller = Controller(handler, hostname="127.0.0.1", port=free_port())
    controller.start()
    extra = {"disable_ssl": True, "disable_tls": True, "from_email": SENDER, "retry_limit": 0, "timeout": 10}
    handler.connection = {"conn_type": "smtp", "host": "127.0.0.1", "port": controller.port, "extra": extra}
    try:
        yield handler
    finally:
        controller.stop()


@pytest.fixture
def smtp(monkeypatch) -> Iterator[SmtpCollector]:
    """A real SMTP server on loopback, the ``smtp_default`` connection to it and the UI's base URL."""
    with smtp_server() as handler:
        monkeypatch.setenv("AIRFLOW_CONN_SMTP_DEFAULT", json.dumps(handler.connection))
        monkeypatch.setenv("AIRFLOW__API__BASE_URL", BASE_URL)
        yield handler


def body(message) -> str:
    """A received message's body (its HTML part, else its text)."""
    return message.get_body(preferencelist=("html", "plain")).get_content()


def text(html_body: str) -> str:
    """What an HTML body reads as."""
    return html.unescape(re.sub(r"<[^>]+>", "", html_body))


class Recording(BaseNotifier):
    """Any other Airflow notifier (Slack...): a templated field, and a record of what it is given."""

    template_fields = ("text",)
    calls: ClassVar[list] = []  # shared by the copies the alerts make of it

    def __init__(self):
        super().__init__()
        self.text = "{{ alert_text }}"

    def notify(self, context):
        self.calls.append({**context, "rendered_text": self.text})


@pytest.fixture
def recording() -> Iterator[type[Recording]]:
    """:class:`Recording`, its calls cleared before and after the test (its path, for a channel that
    must be named: ``tests.support.alerts.Recording``)."""
    Recording.calls.clear()
    yield Recording
    Recording.calls.clear()
