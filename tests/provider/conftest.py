"""The provider's tests: a fake of Copyleaks' endpoints (tests/support/fake_copyleaks.py) on a real port."""

from __future__ import annotations

import pytest

from image_audit_dev.servers import BackgroundServer
from tests.support.fake_copyleaks import FakeCopyleaks


@pytest.fixture(scope="module")
def server():
    """One fake per test module, serving on loopback."""
    fake = FakeCopyleaks()
    with BackgroundServer(fake.app) as running:
        fake.url = running.url
        yield fake


@pytest.fixture
def fake(server) -> FakeCopyleaks:
    """The fake with nothing recorded or scripted yet."""
    server.reset()
    return server
