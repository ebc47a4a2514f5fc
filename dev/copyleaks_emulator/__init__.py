"""A faithful local emulator of the Copyleaks AI Image Detector API (for the demo, tests and benchmarks)."""

from copyleaks_emulator.app import create_app
from copyleaks_emulator.settings import EmulatorSettings

__all__ = ["EmulatorSettings", "create_app"]
