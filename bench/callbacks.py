"""Realistic Copyleaks callbacks for the ingest benchmark: the emulator's own detection bodies."""

from __future__ import annotations

import json

from copyleaks_emulator.detector import decode, detect
from copyleaks_emulator.samples import sample_image

MODEL = "ai-image-1-ultra-01-09-2025"


def scan_ids(count: int, prefix: str = "bench") -> list[str]:
    return [f"{prefix}-{i:07d}" for i in range(count)]


def callback_bodies(ids: list[str]) -> list[bytes]:
    """One detection body per scan id, over a handful of real sample images (masks of real shapes)."""
    images = [decode(sample_image(f"img-{i:05d}.jpg")[0]) for i in range(8)]
    return [
        json.dumps(
            {**detect(images[i % len(images)], scan_id, model=MODEL), "developerPayload": "bench"}
        ).encode()
        for i, scan_id in enumerate(ids)
    ]
