"""A submission request is validated before anything is sent: a clear, typed error naming the field."""

from __future__ import annotations

import pytest

from copyleaks_provider.exceptions import (
    CopyleaksValidationError,
)
from copyleaks_provider.validation import SubmitRequest
from tests.support.fake_copyleaks import (
    CDN_SECRET,
)

# --- validation: a clear typed error, nothing sent -----------------------------------------------
VALID = {
    "scan_id": "scan-1",
    "url": "https://cdn.example.com/a.png",
    "file_name": "a.png",
    "webhook_url": "https://hooks.example.com/callbacks/scan-1/t",
}


@pytest.mark.parametrize(
    ("field", "value", "complaint"),
    [
        ("scan_id", "ab", "scan id"),
        ("scan_id", "Upper-Case", "scan id"),
        ("scan_id", "x" * 37, "scan id"),
        ("scan_id", "has space", "scan id"),
        ("file_name", "a.gif", "extension"),
        ("file_name", "no-extension", "extension"),
        ("file_name", "x" * 252 + ".png", "255"),
        ("file_name", "", "255"),
        ("model", "gpt-image", "unknown model"),
        ("mask_type", "overlay", "maskType"),
        ("url", "ftp://cdn.example.com/a.png", "scheme"),
        ("url", "https:///a.png", "no host"),
        ("url", "cdn.example.com/a.png", "scheme"),
        ("webhook_url", "file:///tmp/hook", "scheme"),
        ("headers", [("X-Only-Name",)], "pairs"),
        ("headers", [("X-A", 1)], "pairs"),
        ("headers", [("", "v")], "non-empty"),
        ("headers", [("X-Injected", "v\r\nHost: evil")], "CR or LF"),
        ("headers", "X-A: v", "pairs"),
    ],
)
def test_invalid_requests_are_refused_before_sending(field, value, complaint):
    with pytest.raises(CopyleaksValidationError, match=complaint) as raised:
        SubmitRequest(**{**VALID, field: value})
    assert field in str(raised.value)


def test_valid_edge_cases_are_accepted():
    for name in ("A.JPEG", "b.Tiff", "c.heic", "d.HEIF", "e.bmp", "f.webp", "x" * 251 + ".png"):
        assert SubmitRequest(**{**VALID, "file_name": name}).file_name == name
    for scan_id in ("abc", "x" * 36, """a!@$^&-+%=_(){}<>';:/.",~|"""):
        assert SubmitRequest(**{**VALID, "scan_id": scan_id}).scan_id == scan_id
    request = SubmitRequest(**{**VALID, "headers": [["X-A", "1"]], "mask_type": "heatmap"})
    assert request.to_wire()["headers"] == [["X-A", "1"]]


def test_a_validation_error_does_not_echo_header_values():
    with pytest.raises(CopyleaksValidationError) as raised:
        SubmitRequest(**{**VALID, "headers": [("Authorization", CDN_SECRET + "\n")]})
    assert CDN_SECRET not in str(raised.value)
