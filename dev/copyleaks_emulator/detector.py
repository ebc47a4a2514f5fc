"""The emulated detector: decode and check an image like Copyleaks, then a deterministic verdict.

Same bytes, same verdict (the verdict is seeded by a hash of the bytes). The spread looks like a real
catalog: 35% human, 25% human with a small AI touch-up, 25% partly AI (one large region), 15% fully
AI. The AI region is a rectangle, so its RLE is built directly (one run per row, or a single run when
it spans the full width) without a full-size array, and ``summary.ai`` is exactly its share of pixels.
"""

from __future__ import annotations

import hashlib
import io
import random
from dataclasses import dataclass
from datetime import UTC, datetime

from PIL import Image, UnidentifiedImageError

from copyleaks_emulator import image_codecs  # noqa: F401  (registers HEIC/HEIF)

MIN_SIDE = 512
#: At most 6000x4500 = 27 megapixels, as Copyleaks documents. The limit is on the pixel count, so
#: 4500x6000 and other shapes of at most 27 MP pass too.
MAX_PIXELS = 6000 * 4500
MAX_MEGAPIXELS = MAX_PIXELS // 1_000_000
MAX_BYTES = 32 * 1024 * 1024
#: The HTTP status of the sync check for an image Copyleaks cannot scan.
IMAGE_ERROR_STATUS = 400
IMAGE_ERROR_CODE = IMAGE_ERROR_STATUS  # deprecated alias of IMAGE_ERROR_STATUS
#: EXIF tags read into ``imageInfo.metadata``: DateTime, Artist, Software.
EXIF_METADATA = (("issuedTime", 0x0132), ("issuedBy", 0x013B), ("appOrDeviceUsed", 0x0131))


@dataclass(frozen=True)
class CopyleaksError:
    """An entry of Copyleaks' error table: ``code`` (numeric), ``id`` (machine-readable), ``type``."""

    code: int
    id: str
    type: str


#: From Copyleaks' error table (docs.copyleaks.com "Handling Errors"): 5 and 6 with their documented ids;
#: 8 ("The image quality is too low to scan") and 14 ("The submitted file is invalid") have no documented
#: id, so those ids are the emulator's choice.
DOWNLOAD_FAILED = CopyleaksError(5, "download_failed", "api_error")
FILE_TOO_LARGE = CopyleaksError(6, "file_too_large", "invalid_request_error")
IMAGE_QUALITY_TOO_LOW = CopyleaksError(8, "image_quality_too_low", "invalid_request_error")
INVALID_FILE = CopyleaksError(14, "invalid_file", "invalid_request_error")
#: The error webhook shapes the emulator can send: Copyleaks' documented one (the default), or the other
#: shape receivers accept (``scannedDocument`` + ``error{code, message}``, the code being 400).
DOCUMENTED_ERROR_SHAPE, LEGACY_ERROR_SHAPE = "documented", "legacy"


class ImageRejected(ValueError):
    """The image cannot be scanned. ``code``: the sync check's HTTP status; ``error``: the entry of
    Copyleaks' error table that goes into the error webhook."""

    def __init__(self, message: str, error: CopyleaksError = INVALID_FILE, code: int = IMAGE_ERROR_STATUS):
        super().__init__(message)
        self.error = error
        self.code = code


@dataclass(frozen=True)
class DecodedImage:
    width: int
    height: int
    metadata: dict[str, str]
    digest: bytes


def check_size(size: int) -> None:
    if size >= MAX_BYTES:
        raise ImageRejected(f"image too large: {size} bytes (limit 32 MB)", FILE_TOO_LARGE)


def decode(data: bytes) -> DecodedImage:
    """Decode ``data`` fully and apply Copyleaks' limits (CPU-bound: call it in a worker thread)."""
    check_size(len(data))
    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
            if width * height > MAX_PIXELS:  # checked before decoding a single pixel
                raise ImageRejected(
                    f"image too large: {width}x{height} is over {MAX_MEGAPIXELS} megapixels (6000x4500)",
                    FILE_TOO_LARGE,
                )
            image.load()
            exif = image.getexif()
    except ImageRejected:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageRejected(f"image too large: over {MAX_MEGAPIXELS} megapixels", FILE_TOO_LARGE) from exc
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageRejected(f"image could not be decoded ({type(exc).__name__})") from exc
    if width < MIN_SIDE or height < MIN_SIDE:
        raise ImageRejected(
            f"image too small: {width}x{height} (minimum {MIN_SIDE}x{MIN_SIDE})", IMAGE_QUALITY_TOO_LOW
        )
    metadata = {key: str(exif[tag]).strip() for key, tag in EXIF_METADATA if exif.get(tag)}
    return DecodedImage(width, height, metadata, hashlib.sha256(data).digest())


def _rectangle_rle(width: int, box: tuple[int, int, int, int]) -> tuple[list[int], list[int]]:
    """RLE of the rectangle ``[x0, x1) x [y0, y1)``; one run when it spans the full width."""
    x0, y0, x1, y1 = box
    if x0 == 0 and x1 == width:
        return [y0 * width], [(y1 - y0) * width]
    starts = [row * width + x0 for row in range(y0, y1)]
    return starts, [x1 - x0] * len(starts)


def _ai_region(width: int, height: int, digest: bytes) -> tuple[int, int, int, int] | None:
    """The AI-generated rectangle of an image (None: all human), chosen by its content hash."""
    rng = random.Random(int.from_bytes(digest[:8], "big"))
    kind = rng.random()
    if kind < 0.35:
        return None
    if kind >= 0.85:
        return 0, 0, width, height
    low, high = (0.05, 0.2) if kind < 0.60 else (0.45, 0.9)  # a touch-up, or a large region
    w, h = max(1, int(width * rng.uniform(low, high))), max(1, int(height * rng.uniform(low, high)))
    x, y = rng.randrange(0, width - w + 1), rng.randrange(0, height - h + 1)
    return x, y, x + w, y + h


def detect(image: DecodedImage, scan_id: str, *, model: str, sandbox: bool = False) -> dict:
    """The detection response for ``image``; sandbox gives a fixed mock (the top half AI), no credits."""
    width, height = image.width, image.height
    box = (0, 0, width, height // 2) if sandbox else _ai_region(width, height, image.digest)
    starts, lengths = _rectangle_rle(width, box) if box else ([], [])
    ai = round(sum(lengths) / (width * height), 6)
    credits = 0 if sandbox else 1
    return {
        "model": model,
        "result": {"starts": starts, "lengths": lengths},
        "summary": {"human": round(1 - ai, 6), "ai": ai},
        "imageInfo": {"shape": {"height": height, "width": width}, "metadata": image.metadata},
        "scannedDocument": {
            "scanId": scan_id,
            "actualCredits": credits,
            "expectedCredits": credits,
            "creationTime": utc_now_iso(),
        },
    }


def error_body(scan_id: str, rejected: ImageRejected, shape: str = DOCUMENTED_ERROR_SHAPE) -> dict:
    """The error webhook of a failed scan (the caller adds ``developerPayload``).

    ``documented`` (default): Copyleaks' documented error webhook, ``{"status": 1, "error": {"type",
    "id", "code", "message"}}``, with no ``scannedDocument`` (``type`` a string). ``legacy``:
    ``{"scannedDocument": {"scanId"}, "error": {"code": 400, "message"}}``.
    """
    if shape == LEGACY_ERROR_SHAPE:
        return {
            "scannedDocument": {"scanId": scan_id},
            "error": {"code": rejected.code, "message": str(rejected)},
        }
    if shape != DOCUMENTED_ERROR_SHAPE:
        raise ValueError(f"unknown error webhook shape {shape!r}")
    error = rejected.error
    return {
        "status": 1,
        "error": {"type": error.type, "id": error.id, "code": error.code, "message": str(rejected)},
    }


def utc_now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
