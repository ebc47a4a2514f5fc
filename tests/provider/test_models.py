"""Detection response / webhook body models and the RLE mask codec."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from copyleaks_provider.models import (
    DetectionResponse,
    WebhookBody,
    check_rle_bounds,
    decode_rle_mask,
    encode_rle_mask,
)


def detection(**overrides) -> dict:
    body = {
        "model": "ai-image-1-ultra-01-09-2025",
        "result": {"starts": [0, 512, 1536], "lengths": [256, 512, 768]},
        "summary": {"human": 0.3, "ai": 0.7},
        "imageInfo": {
            "shape": {"height": 1024, "width": 768},
            "metadata": {"issuedTime": "2026-01-01T00:00:00Z", "issuedBy": "Cam", "appOrDeviceUsed": "App"},
        },
        "scannedDocument": {
            "scanId": "my-scan-1",
            "actualCredits": 1,
            "expectedCredits": 1,
            "creationTime": "2026-11-24T10:00:00Z",
        },
    }
    body.update(overrides)
    return body


# --- RLE -----------------------------------------------------------------------------------------
def test_runs_span_rows_in_row_major_order():
    # 3 x 4 image: one run from the end of row 0 across the whole of row 1 into row 2.
    mask = decode_rle_mask([2], [7], height=3, width=4)
    np.testing.assert_array_equal(
        mask,
        [
            [False, False, True, True],
            [True, True, True, True],
            [True, False, False, False],
        ],
    )
    assert mask.dtype == bool
    assert encode_rle_mask(mask) == ([2], [7])


@pytest.mark.parametrize(
    ("starts", "lengths", "height", "width"),
    [
        ([], [], 3, 5),  # empty mask: no AI pixel
        ([0], [15], 3, 5),  # full mask
        ([0, 14], [1, 1], 3, 5),  # first and last pixel
        ([4, 5], [1, 1], 3, 5),  # adjacent runs across a row boundary
        ([0], [1], 1, 1),
    ],
)
def test_decode_then_encode(starts, lengths, height, width):
    mask = decode_rle_mask(starts, lengths, height, width)
    assert mask.shape == (height, width)
    assert int(mask.sum()) == sum(lengths)
    re_starts, re_lengths = encode_rle_mask(mask)
    # adjacent runs come back merged into one; the pixels are the same
    np.testing.assert_array_equal(decode_rle_mask(re_starts, re_lengths, height, width), mask)


def test_encode_merges_adjacent_runs_and_tolerates_overlap():
    assert encode_rle_mask(decode_rle_mask([4, 5], [1, 1], 3, 5)) == ([4], [2])
    overlapping = decode_rle_mask([0, 2], [4, 4], 2, 4)
    assert encode_rle_mask(overlapping) == ([0], [6])


def test_random_masks_round_trip():
    rng = np.random.default_rng(7)
    for height, width in [(1, 1), (7, 3), (64, 48), (512, 513)]:
        mask = rng.random((height, width)) < 0.3
        starts, lengths = encode_rle_mask(mask)
        assert all(isinstance(v, int) for v in starts + lengths)
        np.testing.assert_array_equal(decode_rle_mask(starts, lengths, height, width), mask)


@pytest.mark.parametrize(("starts", "lengths"), [([14], [2]), ([15], [1]), ([0, 10], [5, 6])])
def test_runs_outside_the_image_are_rejected(starts, lengths):
    with pytest.raises(ValueError, match="outside"):
        decode_rle_mask(starts, lengths, 3, 5)
    with pytest.raises(ValueError, match="outside"):
        check_rle_bounds(starts, lengths, 15)
    with pytest.raises(ValidationError, match="outside"):
        DetectionResponse.model_validate(
            detection(
                result={"starts": starts, "lengths": lengths},
                imageInfo={"shape": {"height": 3, "width": 5}},
            )
        )


@pytest.mark.parametrize(
    "result",
    [
        {"starts": [0, 4], "lengths": [1]},  # different lengths
        {"starts": [-1], "lengths": [2]},
        {"starts": [0], "lengths": [0]},
    ],
)
def test_malformed_runs_are_rejected(result):
    with pytest.raises(ValidationError):
        DetectionResponse.model_validate(detection(result=result))


# --- detection response --------------------------------------------------------------------------
def test_the_documented_example_parses_with_camel_case_aliases():
    response = DetectionResponse.model_validate(detection())
    assert response.image_info.shape.width == 768
    assert response.image_info.metadata.app_or_device_used == "App"
    assert response.scanned_document.scan_id == "my-scan-1"
    assert response.scanned_document.creation_time.year == 2026
    mask = response.mask()
    assert mask.shape == (1024, 768)
    assert int(mask.sum()) == 256 + 512 + 768
    wire = response.model_dump(by_alias=True, mode="json")
    assert set(wire) == {"model", "result", "summary", "imageInfo", "scannedDocument"}
    assert wire["scannedDocument"]["actualCredits"] == 1
    assert wire["imageInfo"]["metadata"]["appOrDeviceUsed"] == "App"
    # snake_case works too (populate_by_name), and the dump round-trips
    assert DetectionResponse.model_validate(response.model_dump()) == response
    assert DetectionResponse.model_validate(wire) == response


def test_metadata_is_optional_and_unknown_fields_are_kept():
    body = detection(imageInfo={"shape": {"height": 1024, "width": 768}}, newField=1)
    response = DetectionResponse.model_validate(body)
    assert response.image_info.metadata is None
    assert response.model_dump(by_alias=True)["newField"] == 1


@pytest.mark.parametrize(
    "summary", [{"human": 0.3, "ai": 0.6}, {"human": 0.5, "ai": 0.6}, {"human": -0.1, "ai": 1.1}]
)
def test_summary_must_sum_to_one(summary):
    with pytest.raises(ValidationError, match=r"summary|greater|less"):
        DetectionResponse.model_validate(detection(summary=summary))


def test_summary_tolerates_float_rounding():
    response = DetectionResponse.model_validate(detection(summary={"human": 1 / 3, "ai": 2 / 3}))
    assert response.summary.ai + response.summary.human == pytest.approx(1)


# --- webhook body --------------------------------------------------------------------------------
def test_a_webhook_with_a_result():
    body = WebhookBody.model_validate({**detection(), "developerPayload": "batch-7"})
    assert not body.is_error
    assert body.developer_payload == "batch-7"
    assert body.detection().summary.ai == 0.7
    assert body.wire()["developerPayload"] == "batch-7"
    assert "error" not in body.wire()


def test_a_webhook_with_an_error():
    body = WebhookBody.model_validate(
        {
            "scannedDocument": {"scanId": "my-scan-1"},
            "error": {"code": 400, "message": "image could not be downloaded"},
            "developerPayload": "batch-7",
        }
    )
    assert body.is_error
    assert body.error.code == 400
    assert body.wire() == {
        "scannedDocument": {"scanId": "my-scan-1"},
        "error": {"code": 400, "message": "image could not be downloaded"},
        "developerPayload": "batch-7",
    }
    with pytest.raises(ValueError, match="image could not be downloaded"):
        body.detection()


def test_the_documented_error_webhook_has_no_scanned_document():
    """Copyleaks' documented error webhook: status 1, error{type, id, code, message}; the scan id is
    the callback URL's. ``type`` is a string in Copyleaks' current pages, an integer in older ones."""
    wire = {
        "status": 1,
        "error": {"type": "api_error", "id": "download_failed", "code": 5, "message": "no download"},
        "developerPayload": "batch-7",
    }
    body = WebhookBody.model_validate(wire)
    assert body.is_error and body.scanned_document is None and body.scan_id is None
    assert (body.status, body.error.id, body.error.code, body.error.type) == (
        1,
        "download_failed",
        5,
        "api_error",
    )
    assert body.failure_reason() == "Copyleaks error download_failed (code 5): no download"
    assert body.wire() == wire
    numbered = WebhookBody.model_validate({**wire, "error": {**wire["error"], "type": 2}})
    assert numbered.error.type == 2
    legacy = WebhookBody.model_validate({"error": {"code": 400, "message": "image too small"}})
    assert legacy.failure_reason() == "Copyleaks error (code 400): image too small"
    with pytest.raises(ValueError, match="no download"):
        body.detection()


def test_a_result_webhook_without_scanned_document_is_a_result():
    body = WebhookBody.model_validate({k: v for k, v in detection().items() if k != "scannedDocument"})
    assert not body.is_error and body.scan_id is None and body.summary.ai == 0.7
    with pytest.raises(ValueError, match="not an error"):
        body.failure_reason()


@pytest.mark.parametrize(
    "body",
    [
        {"scannedDocument": {"scanId": "my-scan-1"}},  # neither result nor error
        {"status": 1},  # an error status without the error
        {k: v for k, v in detection().items() if k != "summary"},  # an incomplete result
        {"status": 1, "error": {"id": "download_failed", "message": "x"}},  # an error without its code
        {"error": {"code": 5, "message": "x", "id": "x" * 101}},  # an id too long to be one
    ],
)
def test_a_webhook_needs_a_result_or_an_error(body):
    with pytest.raises(ValidationError):
        WebhookBody.model_validate(body)


def test_a_webhook_result_mask_must_fit_the_image():
    body = detection(result={"starts": [0], "lengths": [10]}, imageInfo={"shape": {"height": 3, "width": 3}})
    with pytest.raises(ValidationError, match="outside"):
        WebhookBody.model_validate(body)
