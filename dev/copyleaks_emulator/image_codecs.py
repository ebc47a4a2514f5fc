"""Optional Pillow codecs: HEIC/HEIF through pillow-heif, when it is installed."""

from __future__ import annotations

try:
    from pillow_heif import register_heif_opener
except ImportError:  # pragma: no cover - optional codec
    HEIF_AVAILABLE = False
else:
    register_heif_opener()
    HEIF_AVAILABLE = True
