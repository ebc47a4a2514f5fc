"""Headless Chromium for reports: a screenshot (the README's, the browser test's) and the rendered DOM.

``python -m image_audit_dev.screenshot report.html docs/report.png --compact`` refreshes the README's.
Chromium is Debian's ``chromium`` package (``apt-get install -y chromium``); set ``IMAGE_AUDIT_CHROMIUM`` to
use another binary.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from PIL import Image

CHROMIUM_ENV = "IMAGE_AUDIT_CHROMIUM"
#: No network, no first-run work, no GPU: a report is a local file with every asset inline.
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
]


class ChromiumNotFoundError(RuntimeError):
    pass


def find_chromium() -> str:
    for candidate in (os.environ.get(CHROMIUM_ENV), shutil.which("chromium"), "/usr/bin/chromium"):
        if candidate and Path(candidate).exists():
            return candidate
    raise ChromiumNotFoundError(
        "chromium not found: `apt-get install -y chromium` or set IMAGE_AUDIT_CHROMIUM"
    )


def _run(args: list[str], timeout: float) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory(prefix="report-chromium-") as profile:
        command = [find_chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args]
        completed = subprocess.run(command, capture_output=True, timeout=timeout, check=False)
    if completed.returncode:
        raise RuntimeError(f"chromium exited {completed.returncode}: {completed.stderr.decode()[-2000:]}")
    return completed


def screenshot(
    html_path: Path, png_path: Path, window: tuple[int, int] = (1280, 2400), timeout: float = 90
) -> Path:
    """Render ``html_path`` in a ``window``-sized viewport and save a PNG screenshot of it."""
    png_path = Path(png_path).resolve()
    png_path.parent.mkdir(parents=True, exist_ok=True)
    _run(
        [
            f"--screenshot={png_path}",
            f"--window-size={window[0]},{window[1]}",
            Path(html_path).resolve().as_uri(),
        ],
        timeout,
    )
    if not png_path.exists():
        raise RuntimeError(f"chromium wrote no screenshot to {png_path}")
    return png_path


def dump_dom(html_path: Path, timeout: float = 90) -> str:
    """The DOM of ``html_path`` after Chromium loaded it, serialised as HTML."""
    return _run(["--dump-dom", Path(html_path).resolve().as_uri()], timeout).stdout.decode()


def compact_png(png_path: Path, colors: int = 256) -> Path:
    """Rewrite a screenshot as a dithered palette PNG (a third of the size, for the README)."""
    with Image.open(png_path) as opened:
        rgb = opened.convert("RGB")
    palette = rgb.quantize(colors, method=Image.Quantize.FASTOCTREE)
    rgb.quantize(palette=palette, dither=Image.Dither.FLOYDSTEINBERG).save(png_path, optimize=True)
    return png_path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Screenshot an image-audit HTML report with Chromium")
    parser.add_argument("html", type=Path)
    parser.add_argument("png", type=Path)
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=2400)
    parser.add_argument("--compact", action="store_true", help="256-colour PNG (README screenshots)")
    args = parser.parse_args(argv)
    png = screenshot(args.html, args.png, (args.width, args.height))
    print(compact_png(png) if args.compact else png)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
