"""The emulator's own tests: a webhook recorder stands in for the receiver (tests/support/emulator.py)."""

from __future__ import annotations

import pytest


@pytest.fixture
def recorder(webhook_recorder):
    """The webhook target and image host the emulator's scans call back and fetch from."""
    return webhook_recorder
