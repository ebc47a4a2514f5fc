"""A fixed, hand-countable set of scans and results for the report tests.

Run ``R2`` of ``audit_dag`` (hand-computed totals in ``EXPECTED``); run ``R1`` before it; the results are
50 x 40 images (2,000 pixels) so mask areas are exact.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from xml.etree import ElementTree

import numpy as np
from PIL import Image, ImageDraw
from sqlalchemy import Engine

from copyleaks_provider.models import encode_rle_mask
from image_audit.warehouse.schema import audit_reports, audit_results
from tests.support.factories import MODEL, insert_scans, new_scan

DAG_ID = "audit_dag"
R1, R2 = "scheduled__2026-11-21T00:00:00+00:00", "scheduled__2026-11-22T00:00:00+00:00"
D1, D2 = datetime(2026, 11, 20, 23, 30, tzinfo=UTC), datetime(2026, 11, 21, 8, 0, tzinfo=UTC)
WIDTH, HEIGHT = 50, 40


@dataclass
class Scan:
    image_id: str
    source: str | None
    ingested_at: datetime
    state: str
    attempt: int = 1
    ai: float | None = None  # a result is stored when set
    mask_pixels: int | None = None  # AI pixels of the mask (default: round(ai * 2000))
    error: str | None = None
    run_id: str = R2
    actual_credits: int = 1
    copyleaks_expected: int = 1
    sandbox: bool = False
    scan_id: str | None = None
    extra: dict = field(default_factory=dict)


def mask_for(pixels: int, width: int = WIDTH, height: int = HEIGHT, seed: int = 0) -> np.ndarray:
    """A mask with exactly ``pixels`` AI pixels: a block in the middle rows, so the overlay is visible."""
    flat = np.zeros(width * height, dtype=bool)
    start = (height // 4) * width + seed % width
    flat[start : start + pixels] = True
    if pixels > flat[start:].size:  # wrap around for large masks
        flat[: pixels - flat[start:].size] = True
    return flat.reshape(height, width)


def r2_scans() -> list[Scan]:
    return [
        Scan("a", "shop", D1, "completed", ai=0.95),
        Scan("b", "shop", D1, "completed", ai=0.90),  # exactly at ai_generated
        Scan("c", "shop", D2, "completed", ai=0.8999),
        Scan("d", "blog", D1, "completed", ai=0.20),  # exactly at partly_ai
        Scan("e", "blog", D1, "completed", attempt=2, ai=0.1999, mask_pixels=20),  # mask 1 %: human
        Scan("f", "blog", D2, "completed", ai=0.10, mask_pixels=100),  # mask exactly 5 %: partly AI
        Scan("g", None, D2, "completed", ai=0.0, mask_pixels=0, sandbox=True),
        Scan("h", "shop", D1, "timed_out", attempt=1, error="no webhook before the run's wait ended"),
        Scan("h", "shop", D1, "completed", attempt=2, ai=0.5),
        Scan("i", "blog", D2, "completed", attempt=1, ai=0.3),  # a late result of the first attempt
        Scan("i", "blog", D2, "completed", attempt=2, ai=0.97),
        Scan("j", "shop", D1, "failed", error="image too small: 100x100 (minimum 512x512)"),
        Scan("k", "blog", D2, "timed_out", attempt=1, error="no webhook before the run's wait ended"),
        Scan("k", "blog", D2, "timed_out", attempt=2, error="no webhook before the run's wait ended"),
        Scan("l", "shop", D1, "rejected", error="missing url"),
        Scan("", None, D1, "rejected", error="missing image id", scan_id="rej-blank-1"),
        Scan(" ", None, D1, "rejected", error="missing image id", scan_id="rej-blank-2"),
        Scan("a", "shop", D1, "rejected", error="duplicate image id in this interval", scan_id="rej-dup-a"),
        Scan("m", "shop", D2, "submitted"),
        Scan("n", "blog", D1, "pending"),
        Scan("o", "shop", D2, "completed", ai=1.0, actual_credits=2),
    ]


def r1_scans() -> list[Scan]:
    return [
        Scan("p", "shop", D1 - timedelta(days=1), "completed", ai=0.95, run_id=R1),
        Scan(
            "e", "blog", D1, "timed_out", attempt=1, run_id=R1, error="no webhook before the run's wait ended"
        ),
    ]


#: Hand-computed aggregates of run R2 with the default thresholds (0.9 / 0.2 / mask 5 %).
EXPECTED = {
    "states": {"pending": 1, "submitted": 1, "completed": 10, "failed": 1, "timed_out": 1, "rejected": 3},
    "verdicts": {"ai_generated": 4, "partly_ai": 4, "human": 2},
    "images": 17,
    "scan_rows": 21,
    "rejected_rows": 4,
    "credits": {
        "expected": 16,
        "actual": 12,
        "copyleaks_expected": 11,
        "sent": 16,
        "results": 11,
        "sandbox_scans": 1,
    },
    "histogram": {0: 1, 2: 1, 3: 1, 4: 1, 10: 1, 17: 1, 18: 1, 19: 3},
    "verdict_by_image": {
        "a": "ai_generated",
        "b": "ai_generated",
        "c": "partly_ai",
        "d": "partly_ai",
        "e": "human",
        "f": "partly_ai",
        "g": "human",
        "h": "partly_ai",
        "i": "ai_generated",
        "o": "ai_generated",
    },
    "top3": ["o", "i", "a"],
}


def image_png(width: int, height: int, seed: int) -> bytes:
    """A small synthetic photo-like picture (gradient sky, a sun, hills) for thumbnails."""
    x = np.linspace(0, 1, width)[None, :, None]
    y = np.linspace(0, 1, height)[:, None, None]
    hue = np.array([(seed * 37) % 255, (seed * 91) % 255, (seed * 53) % 255]) / 255
    sky = (0.35 + 0.65 * (1 - y)) * (0.5 + 0.5 * hue) * 255 + 0 * x
    image = Image.fromarray(sky.clip(0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(image)
    r = min(width, height) // 7
    cx, cy = int(width * (0.2 + 0.6 * ((seed * 17) % 10) / 10)), height // 3
    draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=(250, 214, 90))
    draw.polygon(
        [
            (0, height),
            (0, int(height * 0.7)),
            (width // 3, int(height * 0.55)),
            (width * 2 // 3, int(height * 0.75)),
            (width, int(height * 0.6)),
            (width, height),
        ],
        fill=(40 + seed % 40, 110, 70),
    )
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def insert_report_scans(
    engine: Engine,
    scans: list[Scan],
    *,
    url_base: str = "http://images.invalid",
    width: int = WIDTH,
    height: int = HEIGHT,
    blobs: bool = False,
) -> None:
    """Insert ``scans`` (and their results) as the planner and the receiver would have."""
    scan_rows, result_rows = [], []
    now = datetime(2026, 11, 22, 1, 0, tzinfo=UTC)
    for index, scan in enumerate(scans):
        scan_id = scan.scan_id or f"{scan.image_id}-{scan.attempt}-{'r1' if scan.run_id == R1 else 'r2'}"
        interval_end = datetime.fromisoformat(scan.run_id.split("__")[1])
        scan_rows.append(
            new_scan(
                scan_id,
                scan.state,
                run_id=scan.run_id,
                dag_id=DAG_ID,
                at=now + timedelta(seconds=index),
                image_id=scan.image_id,
                attempt=scan.attempt,
                url=f"{url_base}/img/{scan.image_id or 'none'}.png?signature=secret-token-{index}",
                file_name=f"{scan.image_id or 'none'}.png",
                source=scan.source,
                ingested_at=scan.ingested_at,
                data_interval_start=interval_end - timedelta(days=1),
                data_interval_end=interval_end,
                sandbox=scan.sandbox,
                expected_credits=1,
                submitted_at=now if scan.state not in ("pending", "rejected") else None,
                last_error=scan.error,
            )
        )
        if scan.ai is not None:
            pixels = round(scan.ai * width * height) if scan.mask_pixels is None else scan.mask_pixels
            mask = (
                blob_mask(scan.ai, width, height, index) if blobs else mask_for(pixels, width, height, index)
            )
            starts, lengths = encode_rle_mask(mask)
            result_rows.append(
                {
                    "scan_id": scan_id,
                    "ai": scan.ai,
                    "human": 1 - scan.ai,
                    "model": MODEL,
                    "width": width,
                    "height": height,
                    "mask_starts": starts,
                    "mask_lengths": lengths,
                    "image_metadata": {"issuedBy": "Example Camera Co", "appOrDeviceUsed": f"app-{index}"},
                    "actual_credits": scan.actual_credits,
                    "expected_credits": scan.copyleaks_expected,
                    "developer_payload": "dp-secret-never-rendered",
                    "received_at": now + timedelta(minutes=5),
                    "raw_body": {"developerPayload": "dp-secret-never-rendered"},
                    "mask_pixels": sum(lengths),  # as the receiver stores it
                }
            )
    insert_scans(engine, scan_rows)
    if result_rows:
        with engine.begin() as conn:
            conn.execute(audit_results.insert(), result_rows)


def insert_report_row(
    engine: Engine, dag_id: str, run_id: str, interval_end: datetime, summary: dict
) -> None:
    with engine.begin() as conn:
        conn.execute(
            audit_reports.insert(),
            {
                "dag_id": dag_id,
                "run_id": run_id,
                "created_at": interval_end + timedelta(hours=2),
                "data_interval_start": interval_end - timedelta(days=1),
                "data_interval_end": interval_end,
                "summary": summary,
            },
        )


def demo_scans(count: int = 120, seed: int = 4) -> list[Scan]:
    """A plausible day of scans for the browser test and the README screenshot (mostly human pictures)."""
    rng = np.random.default_rng(seed)
    sources = ["product-photos", "user-uploads", "marketing", "partner-feed"]
    scans = []
    for index in range(count):
        image_id = f"img-{index:04d}"
        source = sources[int(rng.choice(4, p=[0.4, 0.3, 0.2, 0.1]))]
        day = D1 if rng.random() < 0.6 else D2
        roll = rng.random()
        if roll < 0.05:
            scans.append(Scan(image_id, source, day, "failed", error="image could not be decoded (code 400)"))
        elif roll < 0.08:
            scans.append(
                Scan(image_id, source, day, "timed_out", error="no webhook before the run's wait ended")
            )
        elif roll < 0.12:
            reason = "unsupported file extension '.gif'" if rng.random() < 0.5 else "missing url"
            scans.append(Scan(image_id, source, day, "rejected", error=reason))
        else:
            kind = rng.random()
            ai = (
                rng.beta(0.5, 30)
                if kind < 0.7
                else (rng.beta(8, 1.2) if kind < 0.85 else rng.uniform(0.2, 0.9))
            )
            scans.append(Scan(image_id, source, day, "completed", ai=round(float(ai), 4)))
    return scans


def blob_mask(ai: float, width: int, height: int, seed: int) -> np.ndarray:
    """An elliptical AI region covering about ``ai`` of the image (looks like a real detection)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    cx, cy = rng.uniform(0.3, 0.7) * width, rng.uniform(0.3, 0.7) * height
    area = max(ai, 0.0) * width * height
    rx = np.sqrt(area / np.pi * 1.4)
    ry = area / np.pi / max(rx, 1e-9)
    return ((xx - cx) / max(rx, 1e-9)) ** 2 + ((yy - cy) / max(ry, 1e-9)) ** 2 <= 1


# --- reported runs ------------------------------------------------------------------------------------
#: A run before R1 that left only a report row.
R0 = "scheduled__2026-11-20T00:00:00+00:00"


class ImageFetcher:
    """``fetch_image`` for the tests: generated PNGs by URL; image ``a`` is unreachable."""

    def __init__(self):
        self.urls: list[str] = []

    def __call__(self, url: str) -> bytes:
        self.urls.append(url)
        if "/img/a.png" in url:
            raise ConnectionError("unreachable")
        return image_png(WIDTH, HEIGHT, seed=len(self.urls))


def seed_reported_runs(engine) -> None:
    """R1's and R2's scans, R0's report row (no scans), and report rows of another DAG and a later run."""
    insert_report_scans(engine, r1_scans())
    insert_report_scans(engine, r2_scans())
    old = {"images": 5, "completed": 4, "ai_generated": 1, "partly_ai": 1, "human": 2, "failed": 1}
    insert_report_row(
        engine, DAG_ID, R0, datetime(2026, 11, 20, tzinfo=UTC), old | {"ai_share": 0.25, "flagged_share": 0.5}
    )
    insert_report_row(engine, "other_dag", "x", datetime(2026, 11, 21, tzinfo=UTC), {"ai_share": 0.9})
    insert_report_row(engine, DAG_ID, "later", datetime(2026, 11, 30, tzinfo=UTC), {"ai_share": 0.9})


# --- reading the report's HTML ------------------------------------------------------------------------
SVG = "{http://www.w3.org/2000/svg}"


def svg_charts(html: str) -> dict[str, ElementTree.Element]:
    """The report's inline SVG charts by id, parsed as XML (each must be well-formed)."""
    blocks = re.findall(r'<svg class="chart".*?</svg>', html, flags=re.S)
    charts = {}
    for block in blocks:
        element = ElementTree.fromstring(block)  # noqa: S314 (the report under test, not untrusted)
        charts[element.get("id")] = element
    assert len(charts) == len(blocks), "chart ids are unique"
    return charts


def svg_text(element: ElementTree.Element, tag: str) -> list[str]:
    return ["".join(e.itertext()) for e in element.iter(f"{SVG}{tag}")]
