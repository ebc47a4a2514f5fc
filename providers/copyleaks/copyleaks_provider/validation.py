"""What is sent to Copyleaks, checked before it is sent: nothing goes out that Copyleaks would refuse.

The request validators, ``SubmitRequest`` (one async submission, validated on construction) and the
paths and form of the endpoints, none of which needs HTTP. The catalog uses the validators too, to
reject rows before planning.
"""

from __future__ import annotations

from functools import partial
from typing import Annotated, Any
from urllib.parse import quote, urlsplit

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator

from copyleaks_provider.exceptions import CopyleaksValidationError
from copyleaks_provider.scan_ids import DEFAULT_MODEL, canonical_model, validate_scan_id

SUBMIT_PATH = "/v1/ai-image-detector-async/{scan_id}/submit"
CHECK_PATH = "/v1/ai-image-detector/{scan_id}/check"
#: File extensions the async endpoint accepts.
SUPPORTED_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".tiff", ".bmp", ".heic", ".heif")
MASK_TYPES = ("heatmap",)
MAX_FILE_NAME = 255
#: Copyleaks refuses uploads of 32 MB or more.
MAX_IMAGE_BYTES = 32 * 1024 * 1024


def validate_image_url(url: str, *, what: str = "image URL") -> str:
    parts = urlsplit(url or "")
    if parts.scheme not in ("http", "https"):
        raise CopyleaksValidationError(f"unsupported URL scheme {parts.scheme!r} in the {what}: use http(s)")
    if not parts.hostname:
        raise CopyleaksValidationError(f"the {what} has no host")
    return url


def validate_file_name(file_name: str) -> str:
    if not file_name or len(file_name) > MAX_FILE_NAME:
        raise CopyleaksValidationError(f"file name must be 1 to {MAX_FILE_NAME} characters")
    extension = "." + file_name.rsplit(".", 1)[-1].lower() if "." in file_name else ""
    if extension not in SUPPORTED_EXTENSIONS:
        supported = " ".join(SUPPORTED_EXTENSIONS)
        raise CopyleaksValidationError(
            f"unsupported file extension {extension or '(none)'!r}; supported: {supported}"
        )
    return file_name


def _known_model(model: str) -> str:
    canonical_model(model)
    return model


def _mask_type(mask_type: str | None) -> str | None:
    if mask_type is not None and mask_type not in MASK_TYPES:
        raise CopyleaksValidationError(
            f"unsupported maskType {mask_type!r}; supported: {', '.join(MASK_TYPES)}"
        )
    return mask_type


ScanId = Annotated[str, AfterValidator(validate_scan_id)]
ImageUrl = Annotated[str, AfterValidator(validate_image_url)]
WebhookUrl = Annotated[str, AfterValidator(partial(validate_image_url, what="webhook URL"))]
FileName = Annotated[str, AfterValidator(validate_file_name)]
ModelName = Annotated[str, AfterValidator(_known_model)]
MaskType = Annotated[str | None, AfterValidator(_mask_type)]


class SubmitRequest(BaseModel):
    """One async submission; validated on construction, so an invalid request is never sent.

    Invalid fields raise ``CopyleaksValidationError`` naming the field and the rule, never the value
    (headers may carry credentials). ``headers`` and ``webhook_url`` (it carries the callback's HMAC
    token) stay out of ``repr``.
    """

    model_config = ConfigDict(frozen=True)

    scan_id: ScanId
    url: ImageUrl
    file_name: FileName
    model: ModelName = DEFAULT_MODEL
    webhook_url: WebhookUrl = Field(repr=False)
    mask_type: MaskType = None
    headers: tuple[tuple[str, str], ...] | None = Field(default=None, repr=False)
    sandbox: bool = False
    developer_payload: str | None = None

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as exc:
            problems = [
                f"{'.'.join(map(str, e['loc']))}: {e['msg'].removeprefix('Value error, ')}"
                for e in exc.errors()
            ]
            raise CopyleaksValidationError("invalid submit request: " + "; ".join(problems)) from None

    @field_validator("headers", mode="before")
    @classmethod
    def _headers(cls, value: Any) -> Any:
        if value is None:
            return None
        pairs = []
        for pair in value:
            if not (
                isinstance(pair, list | tuple) and len(pair) == 2 and all(isinstance(p, str) for p in pair)
            ):
                raise CopyleaksValidationError("headers must be [name, value] pairs of strings")
            name, header_value = pair
            if not name.strip() or any(c in name + header_value for c in "\r\n"):
                raise CopyleaksValidationError("header names must be non-empty, without CR or LF")
            pairs.append((name, header_value))
        return tuple(pairs)

    def to_wire(self) -> dict[str, Any]:
        """The JSON body of ``PUT /v1/ai-image-detector-async/{scanId}/submit``."""
        body: dict[str, Any] = {
            "url": self.url,
            "fileName": self.file_name,
            "model": self.model,
            "webhooks": {"url": self.webhook_url},
            "sandbox": self.sandbox,
        }
        if self.mask_type:
            body["maskType"] = self.mask_type
        if self.headers:
            body["headers"] = [list(pair) for pair in self.headers]
        if self.developer_payload is not None:
            body["developerPayload"] = self.developer_payload
        return body


def submit_path(scan_id: str) -> str:
    return SUBMIT_PATH.format(scan_id=quote(scan_id, safe=""))


def check_path(scan_id: str) -> str:
    return CHECK_PATH.format(scan_id=quote(validate_scan_id(scan_id), safe=""))


def check_form(image: bytes, file_name: str, model: str, sandbox: bool) -> dict[str, str]:
    """The form fields of a sync check, after validating what Copyleaks would refuse."""
    if not image:
        raise CopyleaksValidationError("the image is empty")
    if len(image) >= MAX_IMAGE_BYTES:
        raise CopyleaksValidationError(f"the image is {len(image)} bytes; Copyleaks accepts under 32 MB")
    validate_file_name(file_name)
    canonical_model(model)
    return {"filename": file_name, "model": model, "sandbox": str(sandbox).lower()}
