"""Thumbnails with the AI mask tinted: exactly the mask's pixels, scaled masks keeping small regions."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image
from sqlalchemy import select

from copyleaks_provider.models import decode_rle_mask
from image_audit.reporting.overlays import TINT_ALPHA, TINT_COLOR, overlay_thumbnail, scale_mask, tint
from image_audit.reporting.overlays import placeholder as make_placeholder
from image_audit.warehouse.engine import get_engine
from image_audit.warehouse.schema import audit_results
from tests.support.reports import (
    HEIGHT,
    WIDTH,
    image_png,
    insert_report_scans,
    mask_for,
    r2_scans,
)


def test_tint_changes_exactly_the_mask_pixels():
    rng = np.random.default_rng(7)
    pixels = rng.integers(0, 256, size=(HEIGHT, WIDTH, 3), dtype=np.uint8)
    mask = mask_for(333, seed=11)
    out = np.asarray(tint(Image.fromarray(pixels, "RGB"), mask))
    expected = np.rint((1 - TINT_ALPHA) * pixels.astype(float) + TINT_ALPHA * np.array(TINT_COLOR))
    assert np.array_equal(out[mask], expected[mask].astype(np.uint8))
    assert np.array_equal(out[~mask], pixels[~mask])
    changed = (out != pixels).any(axis=2)
    assert np.array_equal(changed, mask)


def test_overlay_thumbnail_tints_the_decoded_mask(sqlite_warehouse_url):
    engine = get_engine(sqlite_warehouse_url)
    insert_report_scans(engine, r2_scans())
    with engine.connect() as conn:
        row = conn.execute(select(audit_results).where(audit_results.c.scan_id == "h-2-r2")).one()
    mask = decode_rle_mask(row.mask_starts, row.mask_lengths, row.height, row.width)
    assert mask.sum() == 1000  # ai 0.5 of 2,000 pixels
    png = image_png(WIDTH, HEIGHT, seed=3)
    original = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
    thumbnail, drawn = overlay_thumbnail(png, mask)
    assert drawn and thumbnail.size == (WIDTH, HEIGHT)
    out = np.asarray(thumbnail)
    assert np.array_equal((out != original).any(axis=2), mask)
    placeholder, drawn = overlay_thumbnail(b"not an image", mask)
    assert not drawn and placeholder.size == (WIDTH, HEIGHT)
    untinted = np.asarray(make_placeholder((WIDTH, HEIGHT)))
    assert np.array_equal((np.asarray(placeholder) != untinted).any(axis=2), mask)


def test_large_masks_are_scaled_to_the_thumbnail_keeping_small_regions():
    mask = np.zeros((800, 1000), dtype=bool)
    mask[100:103, 200:203] = True  # 9 pixels: far less than one thumbnail cell
    mask[400:800, 500:1000] = True
    png = image_png(1000, 800, seed=5)
    thumbnail, drawn = overlay_thumbnail(png, mask)
    assert drawn and thumbnail.size == (360, 288)
    scaled = scale_mask(mask, (360, 288))
    assert scaled[36:38, 72:74].any()  # the tiny region stays visible
    assert scaled[150:, 181:].all() and not scaled[:30].any()
    base = np.asarray(overlay_thumbnail(png, np.zeros_like(mask))[0])
    assert np.array_equal((np.asarray(thumbnail) != base).any(axis=2), scaled)
