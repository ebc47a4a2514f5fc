"""Copyleaks' request rules, written from the API documentation (not shared with our client on purpose).

Keeping the emulator's rules independent of ``copyleaks_provider`` means a client bug is caught here
instead of being agreed with. Every refusal is an :class:`ApiError` with a clear message.
"""

from __future__ import annotations

import base64
import binascii
import re
from datetime import date, datetime
from typing import Any
from urllib.parse import urlsplit

SCAN_ID = re.compile(r"""[a-z0-9!@$^&\-+%=_(){}<>';:/.",~|]{3,36}""")
MODEL_ALIASES = {"ai-image-1-ultra": "ai-image-1-ultra-01-09-2025"}
MODELS = {*MODEL_ALIASES, *MODEL_ALIASES.values()}
ASYNC_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".tiff", ".bmp", ".heic", ".heif")
SYNC_EXTENSIONS = (".png", ".bmp", ".jpg", ".jpeg", ".webp", ".heic", ".heif")
MASK_TYPES = ("heatmap",)
MAX_FILE_NAME = 255
#: The longest usage history the emulator answers at once (Copyleaks documents no limit).
MAX_USAGE_DAYS = 366


class ApiError(Exception):
    """An HTTP error answer: ``status``, a short ``message`` (the JSON body) and extra ``headers``."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


def require(condition: Any, message: str) -> None:
    """400 with ``message`` unless ``condition`` holds."""
    if not condition:
        raise ApiError(400, message)


def full_model_name(model: Any) -> str:
    """The full model name for an alias or full name; 400 for anything else."""
    require(
        isinstance(model, str) and model in MODELS, f"model must be one of {sorted(MODELS)}, got {model!r}"
    )
    return MODEL_ALIASES.get(model, model)


def check_scan_id(scan_id: str) -> None:
    require(
        SCAN_ID.fullmatch(scan_id),
        "invalid scanId: 3 to 36 characters of lower-case letters, digits and !@$^&-+%=_(){}<>';:/.\",~|",
    )


def check_file_name(file_name: Any, extensions: tuple[str, ...], field: str) -> None:
    require(
        isinstance(file_name, str) and 0 < len(file_name) <= MAX_FILE_NAME,
        f"{field} is required (at most {MAX_FILE_NAME} characters)",
    )
    require(
        file_name.lower().endswith(extensions),
        f"{field} has an unsupported file extension; supported: {' '.join(extensions)}",
    )


def _is_http_url(value: Any) -> bool:
    parts = urlsplit(value) if isinstance(value, str) else None
    return bool(parts and parts.scheme in ("http", "https") and parts.hostname)


def _is_header_pairs(headers: Any) -> bool:
    return isinstance(headers, list) and all(
        isinstance(pair, list) and len(pair) == 2 and all(isinstance(part, str) and part for part in pair)
        for pair in headers
    )


def validate_submit(scan_id: str, body: Any) -> None:
    """The async submit's rules (``PUT .../{scanId}/submit``)."""
    check_scan_id(scan_id)
    require(isinstance(body, dict), "the body must be a JSON object")
    require(_is_http_url(body.get("url")), "url is required and must be an http(s) URL")
    check_file_name(body.get("fileName"), ASYNC_EXTENSIONS, "fileName")
    full_model_name(body.get("model"))
    mask_type = body.get("maskType")
    require(mask_type is None or mask_type in MASK_TYPES, f"maskType must be one of {MASK_TYPES}")
    require(
        body.get("headers") is None or _is_header_pairs(body["headers"]),
        "headers must be [name, value] pairs",
    )
    webhooks = body.get("webhooks")
    require(
        isinstance(webhooks, dict) and _is_http_url(webhooks.get("url")),
        "webhooks.url is required and must be an http(s) URL",
    )
    require(isinstance(body.get("sandbox", False), bool), "sandbox must be a boolean")
    payload = body.get("developerPayload")
    require(payload is None or isinstance(payload, str), "developerPayload must be a string")


def parse_json_check(body: Any) -> tuple[bytes, str, str, bool]:
    """The JSON form of the sync check: (image bytes, filename, model, sandbox)."""
    require(isinstance(body, dict), "the body must be a JSON object")
    require(isinstance(body.get("base64"), str) and body["base64"], "base64 is required")
    try:
        data = base64.b64decode(body["base64"], validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ApiError(400, "base64 is not valid base64") from exc
    sandbox = body.get("sandbox", False)
    require(isinstance(sandbox, bool), "sandbox must be a boolean")
    return data, _checked_sync_fields(body.get("filename"), body.get("model")), body.get("model"), sandbox


def _checked_sync_fields(file_name: Any, model: Any) -> str:
    check_file_name(file_name, SYNC_EXTENSIONS, "filename")
    full_model_name(model)
    return file_name


def parse_form_check(form: Any) -> tuple[Any, str, str, bool]:
    """The multipart form of the sync check: (upload, filename, model, sandbox)."""
    upload = form.get("image")
    require(upload is not None and hasattr(upload, "read"), "the image file (field 'image') is required")
    file_name = form.get("filename") or upload.filename
    sandbox = str(form.get("sandbox") or "false").lower()
    require(sandbox in ("true", "false"), "sandbox must be true or false")
    model = form.get("model")
    return upload, _checked_sync_fields(file_name, model), model, sandbox == "true"


def parse_usage_date(value: str | None, field: str) -> date:
    """A usage-history query date, ``dd-MM-yyyy``; 400 when missing or malformed."""
    require(value, f"{field} is required (dd-MM-yyyy)")
    try:
        return datetime.strptime(value, "%d-%m-%Y").date()
    except ValueError:
        raise ApiError(400, f"{field} must be a date as dd-MM-yyyy, got {value[:20]!r}") from None
