"""Heatmap overlays: the decoded Copyleaks mask tinted over the image, as small embeddable thumbnails."""

from __future__ import annotations

import base64
import io
import logging

import numpy as np
from PIL import Image, ImageDraw, ImageFont, ImageOps

from copyleaks_provider.models import MAX_IMAGE_PIXELS

log = logging.getLogger(__name__)

#: Tint of AI pixels: red at 45 % opacity keeps the picture readable under it.
TINT_COLOR = (220, 38, 38)
TINT_ALPHA = 0.45
THUMBNAIL_SIZE = 360


def tint(image: Image.Image, mask: np.ndarray, color=TINT_COLOR, alpha: float = TINT_ALPHA) -> Image.Image:
    """``image`` (RGB) with the pixels where ``mask`` is True blended towards ``color``.

    Each tinted channel is ``round((1 - alpha) * pixel + alpha * color)``; other pixels are untouched.
    """
    rgb = np.asarray(image.convert("RGB"))
    if mask.shape != rgb.shape[:2]:
        raise ValueError(f"mask {mask.shape} does not match the image {rgb.shape[:2]}")
    # the blend of every possible value, per channel (the same float operations as blending each
    # pixel, three times fewer): a lookup of 256 values for each tinted pixel's channel
    levels = np.arange(256, dtype=np.float64)[:, None]
    table = np.rint((1.0 - alpha) * levels + alpha * np.asarray(color, dtype=np.float64)).astype(np.uint8)
    out = rgb.copy()
    out[mask] = table[rgb[mask], np.arange(3)]
    return Image.fromarray(out, "RGB")


def scale_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``mask`` resized to ``size`` (width, height); a cell is AI when any AI pixel falls in it.

    Thumbnails shrink images ten times or more: a small AI region must stay visible.
    """
    if mask.shape[::-1] == tuple(size):
        return mask
    as_image = Image.fromarray(mask.astype(np.uint8) * 255, "L")
    return np.asarray(as_image.resize(size, Image.Resampling.BOX)) > 0


def thumbnail_size(width: int, height: int, longest: int = THUMBNAIL_SIZE) -> tuple[int, int]:
    scale = min(1.0, longest / max(width, height, 1))
    return max(1, round(width * scale)), max(1, round(height * scale))


def placeholder(size: tuple[int, int], text: str = "image unavailable") -> Image.Image:
    """A neutral canvas standing in for an image that could not be fetched (the mask is still drawn on it)."""
    canvas = Image.new("RGB", size, (226, 229, 234))
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default(size=max(10, min(size) // 12))
    box = draw.textbbox((0, 0), text, font=font)
    position = ((size[0] - (box[2] - box[0])) / 2, (size[1] - (box[3] - box[1])) / 2)
    draw.text(position, text, fill=(90, 96, 108), font=font)
    return canvas


def overlay_thumbnail(
    image_bytes: bytes | None, mask: np.ndarray, longest: int = THUMBNAIL_SIZE
) -> tuple[Image.Image, bool]:
    """The thumbnail of an image with its mask tinted; ``(thumbnail, True)`` when the image itself was drawn.

    The mask's shape (Copyleaks' ``imageInfo.shape``) sets the geometry; an image fetched at another size
    is stretched onto it. Undecodable bytes, and an image of more pixels than Copyleaks scans (a
    decompression bomb: a few KB that decode to GBs), give a placeholder.
    """
    height, width = mask.shape
    size = thumbnail_size(width, height, longest)
    picture, drawn = None, False
    if image_bytes:
        try:
            with Image.open(io.BytesIO(image_bytes)) as opened:
                if opened.width * opened.height > MAX_IMAGE_PIXELS:  # read from the header: nothing decoded
                    raise Image.DecompressionBombError(f"{opened.width}x{opened.height} pixels")
                picture = ImageOps.exif_transpose(opened).convert("RGB")
                picture.thumbnail((max(size) * 2, max(size) * 2), Image.Resampling.BOX)
                picture = picture.resize(size, Image.Resampling.LANCZOS)
            drawn = True
        except Exception as exc:  # any undecodable payload: the report shows a placeholder instead
            log.warning("Could not decode an image for the report (%s)", type(exc).__name__)
    if picture is None:
        picture = placeholder(size)
    return tint(picture, scale_mask(mask, size)), drawn


def to_data_uri(image: Image.Image, fmt: str = "JPEG", **options) -> str:
    buffer = io.BytesIO()
    if fmt == "JPEG":
        options = {"quality": 82, "optimize": True, **options}
    image.save(buffer, format=fmt, **options)
    mime = {"JPEG": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp"}[fmt]
    return f"data:{mime};base64,{base64.b64encode(buffer.getvalue()).decode('ascii')}"
