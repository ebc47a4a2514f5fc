"""What the tests share: factories, fixture plugins, fakes, the one poller, an injected clock."""

from pathlib import Path

#: The project's root (pyproject.toml, dags/, plugins/, include/, providers/, dev/).
ROOT = Path(__file__).resolve().parents[2]
