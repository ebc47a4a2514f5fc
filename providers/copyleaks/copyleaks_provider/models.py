"""Typed model of Copyleaks' detection response and webhook body, and the RLE mask codec.

Field names are snake_case in Python and camelCase on the wire (``model_dump(by_alias=True)`` gives
the wire form). Unknown fields are kept, so a newer Copyleaks answer still parses.

A failed scan's webhook comes in two shapes, both accepted: Copyleaks' documented error webhook
``{"status": 1, "error": {"type", "id", "code", "message"}, "developerPayload"}`` (no
``scannedDocument``; ``type`` a string or an integer), and ``{"scannedDocument": {"scanId"}, "error":
{"code", "message"}}``. A webhook body need not carry ``scannedDocument``: the receiver takes the scan
id from the authenticated callback URL.

Every value is bounded by what Copyleaks can send (an image of at most :data:`MAX_IMAGE_PIXELS`, a mask
inside it, credits and sizes within a 32-bit integer, finite proportions, text without NUL or lone
surrogates), so a validated body always fits the warehouse's columns.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

import numpy as np
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel

#: Copyleaks' largest image: 6000x4500 = 27 megapixels (the limit is on the pixel count, any shape).
MAX_IMAGE_PIXELS = 6000 * 4500
#: Integers stored in the warehouse's 32-bit columns (credits).
MAX_INT32 = 2**31 - 1


def _storable_text(value: str) -> str:
    """Text every database and file format can hold: no NUL (PostgreSQL's text refuses it) and no lone
    surrogate (not encodable as UTF-8)."""
    if "\x00" in value:
        raise ValueError("text must not contain NUL characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("text must be valid Unicode (no lone surrogates)") from None
    return value


#: A string of the wire format that will be stored or shown.
Text = Annotated[str, AfterValidator(_storable_text)]


class _Wire(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="allow")


class RleMask(_Wire):
    """Run-length-encoded AI pixels: ``starts[i]`` indexes the image flattened row by row."""

    starts: list[int] = Field(default_factory=list)
    lengths: list[int] = Field(default_factory=list)

    @model_validator(mode="after")
    def _runs_are_well_formed(self) -> RleMask:
        if len(self.starts) != len(self.lengths):
            raise ValueError("result.starts and result.lengths must have the same length")
        if any(s < 0 for s in self.starts) or any(n <= 0 for n in self.lengths):
            raise ValueError("result.starts must be >= 0 and result.lengths > 0")
        return self


class Summary(_Wire):
    human: float = Field(ge=0.0, le=1.0)
    ai: float = Field(ge=0.0, le=1.0)

    @model_validator(mode="after")
    def _sums_to_one(self) -> Summary:
        if abs(self.human + self.ai - 1.0) > 1e-3:
            raise ValueError(f"summary.ai + summary.human must be 1, got {self.ai + self.human}")
        return self


class ImageShape(_Wire):
    """The scanned image's size: at most :data:`MAX_IMAGE_PIXELS`, as Copyleaks accepts no bigger one."""

    height: int = Field(gt=0, le=MAX_IMAGE_PIXELS)
    width: int = Field(gt=0, le=MAX_IMAGE_PIXELS)

    @model_validator(mode="after")
    def _within_copyleaks_limit(self) -> ImageShape:
        if self.height * self.width > MAX_IMAGE_PIXELS:
            raise ValueError(f"imageInfo.shape is over Copyleaks' maximum of {MAX_IMAGE_PIXELS} pixels")
        return self


class ImageMetadata(_Wire):
    """Provenance read from the image itself (EXIF, C2PA): written by whoever made the image."""

    issued_time: Annotated[Text, Field(max_length=1000)] | None = None
    issued_by: Annotated[Text, Field(max_length=1000)] | None = None
    app_or_device_used: Annotated[Text, Field(max_length=1000)] | None = None


class ImageInfo(_Wire):
    shape: ImageShape
    metadata: ImageMetadata | None = None


class ScannedDocument(_Wire):
    scan_id: Text = Field(min_length=1, max_length=36)
    actual_credits: int | None = Field(default=None, ge=0, le=MAX_INT32)
    expected_credits: int | None = Field(default=None, ge=0, le=MAX_INT32)
    creation_time: datetime | None = None


class ScanError(_Wire):
    """``error`` of a failed scan: ``code`` and ``message``, and in Copyleaks' documented shape also a
    machine-readable ``id`` (e.g. ``download_failed``) and a ``type`` (e.g. ``api_error``)."""

    code: int = Field(ge=-MAX_INT32, le=MAX_INT32)
    message: Text = Field(max_length=4000)
    id: Text | None = Field(default=None, max_length=100)
    type: int | Annotated[Text, Field(max_length=100)] | None = None

    def reason(self) -> str:
        """One line for ``last_error``: ``Copyleaks error download_failed (code 5): <message>``."""
        label = (
            f"Copyleaks error {self.id} (code {self.code})"
            if self.id
            else f"Copyleaks error (code {self.code})"
        )
        return f"{label}: {self.message}"


class DetectionResponse(_Wire):
    """The answer of the sync check, and the body of a successful webhook."""

    model: Text = Field(max_length=64)
    result: RleMask
    summary: Summary
    image_info: ImageInfo
    scanned_document: ScannedDocument

    @model_validator(mode="after")
    def _mask_fits_image(self) -> DetectionResponse:
        shape = self.image_info.shape
        check_rle_bounds(self.result.starts, self.result.lengths, shape.height * shape.width)
        return self

    def mask(self) -> np.ndarray:
        """The AI-pixel mask as a ``height x width`` boolean array."""
        shape = self.image_info.shape
        return decode_rle_mask(self.result.starts, self.result.lengths, shape.height, shape.width)


class WebhookBody(_Wire):
    """What Copyleaks POSTs to the webhook: a detection response, or ``error`` for a failed scan.

    Both carry the ``developerPayload`` given at submit time; ``scannedDocument`` (with the scan id) is
    optional, since Copyleaks' documented error webhook has none. ``status``: 1 in that error webhook.
    """

    scanned_document: ScannedDocument | None = None
    developer_payload: Text | None = Field(default=None, max_length=4000)
    status: int | None = None
    error: ScanError | None = None
    model: Text | None = Field(default=None, max_length=64)
    result: RleMask | None = None
    summary: Summary | None = None
    image_info: ImageInfo | None = None

    @model_validator(mode="after")
    def _is_result_or_error(self) -> WebhookBody:
        detection = (self.model, self.result, self.summary, self.image_info)
        if self.error is None and any(part is None for part in detection):
            raise ValueError("a webhook body needs either 'error' or model, result, summary and imageInfo")
        if self.error is None:
            shape = self.image_info.shape
            check_rle_bounds(self.result.starts, self.result.lengths, shape.height * shape.width)
        return self

    @property
    def is_error(self) -> bool:
        return self.error is not None

    @property
    def scan_id(self) -> str | None:
        """``scannedDocument.scanId`` when the body carries one."""
        return self.scanned_document.scan_id if self.scanned_document is not None else None

    def failure_reason(self) -> str:
        """Why the scan failed, for ``last_error`` (an error body only)."""
        if self.error is None:
            raise ValueError("not an error webhook")
        return self.error.reason()

    def detection(self) -> DetectionResponse:
        """The detection response inside a successful webhook body (one that carries scannedDocument)."""
        if self.error is not None:
            raise ValueError(f"scan {self.scan_id or '(no scan id)'} failed: {self.error.message}")
        return DetectionResponse.model_validate(self.model_dump(by_alias=True))

    def wire(self) -> dict[str, Any]:
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


def check_rle_bounds(starts: list[int], lengths: list[int], size: int) -> None:
    """Raise ``ValueError`` unless every run lies inside an image of ``size`` pixels and the runs mark
    at most ``size`` pixels in all (so a mask's area is a share of its image)."""
    for start, length in zip(starts, lengths, strict=True):
        if start + length > size:
            raise ValueError(f"mask run {start}+{length} lies outside the {size}-pixel image")
    if sum(lengths) > size:
        raise ValueError(f"the mask's runs mark more pixels than the {size}-pixel image has")


def decode_rle_mask(starts: list[int], lengths: list[int], height: int, width: int) -> np.ndarray:
    """Decode Copyleaks' RLE into a ``height x width`` boolean array (True = AI pixel)."""
    size = height * width
    check_rle_bounds(starts, lengths, size)
    flat = np.zeros(size + 1, dtype=np.int32)
    if len(starts):
        begin = np.asarray(starts, dtype=np.int64)
        np.add.at(flat, begin, 1)
        np.add.at(flat, begin + np.asarray(lengths, dtype=np.int64), -1)
    return (np.cumsum(flat[:size]) > 0).reshape(height, width)


def encode_rle_mask(mask: np.ndarray) -> tuple[list[int], list[int]]:
    """Encode a boolean mask (any shape, flattened row by row) as Copyleaks' ``starts`` / ``lengths``."""
    flat = np.asarray(mask, dtype=bool).ravel()
    edges = np.diff(np.concatenate(([0], flat.view(np.int8), [0])))
    starts = np.flatnonzero(edges == 1)
    ends = np.flatnonzero(edges == -1)
    return starts.tolist(), (ends - starts).tolist()
