"""Copyleaks' own Python SDK (``copyleaks`` 5.x, unmodified) against the emulator.

The SDK is the reference client: if it logs in and its AI image check parses into its own response
model, the emulator's wire format (login answer, paths, body fields, response shape) is faithful.
"""

from __future__ import annotations

import base64

import pytest
from copyleaks.consts import Consts
from copyleaks.copyleaks import Copyleaks
from copyleaks.exceptions.command_error import CommandError
from copyleaks.exceptions.under_maintenance_error import UnderMaintenanceError
from copyleaks.models.ImageDetection.Requests.CopyleaksAiImageDetectionRequestModel import (
    CopyleaksAiImageDetectionRequestModel,
)
from copyleaks.models.ImageDetection.Responses.CopyleaksAiImageDetectionResponseModel import (
    CopyleaksAiImageDetectionResponseModel,
)

from copyleaks_emulator.samples import sample_image
from copyleaks_provider.models import decode_rle_mask


@pytest.fixture
def sdk(emulator):
    """The SDK class pointed at the emulator (and back at Copyleaks afterwards)."""
    identity, api = Consts.IDENTITY_SERVER_URI, Consts.API_SERVER_URI
    Copyleaks.set_identity_uri(emulator.url)
    Copyleaks.set_api_uri(emulator.url)
    yield Copyleaks
    Copyleaks.set_identity_uri(identity)
    Copyleaks.set_api_uri(api)


def request_for(name: str, *, sandbox: bool) -> CopyleaksAiImageDetectionRequestModel:
    data, _ = sample_image(name)
    return CopyleaksAiImageDetectionRequestModel(
        base64=base64.b64encode(data).decode(), file_name=name, model="ai-image-1-ultra", sandbox=sandbox
    )


def test_the_sdk_logs_in_and_its_token_passes_its_own_expiry_check(sdk, emulator):
    token = sdk.login(emulator.email, emulator.api_key)
    sdk.verify_auth_token(token)  # parses .expires, demands more than 5 minutes left
    assert emulator.state()["logins"] == 1


@pytest.mark.parametrize("sandbox", [False, True])
def test_the_sdk_runs_an_ai_image_check_and_parses_the_answer(sdk, emulator, sandbox):
    token = sdk.login(emulator.email, emulator.api_key)
    response = sdk.ImageDetectionClient.submit(
        token, "sdk-check-1", request_for("img-00042.jpg", sandbox=sandbox)
    )
    assert isinstance(response, CopyleaksAiImageDetectionResponseModel)
    assert response.model == "ai-image-1-ultra-01-09-2025"
    assert response.scanned_document.scan_id == "sdk-check-1"
    assert response.scanned_document.actual_credits == (0 if sandbox else 1)
    shape = response.image_info.shape
    mask = decode_rle_mask(response.result.starts, response.result.lengths, shape.height, shape.width)
    assert abs(mask.mean() - response.summary.ai) < 1e-5
    assert abs(response.summary.ai + response.summary.human - 1) < 1e-6
    assert emulator.state()["credits_remaining"] == (1_000_000 if sandbox else 999_999)


def test_the_sdk_sees_refusals_as_its_own_errors(sdk, emulator):
    with pytest.raises(CommandError) as refused:
        sdk.login(emulator.email, "not-the-key")
    assert refused.value.get_response().status_code == 401
    token = sdk.login(emulator.email, emulator.api_key)
    emulator.set_faults(p_5xx=1.0)
    with pytest.raises(UnderMaintenanceError):
        sdk.ImageDetectionClient.submit(token, "sdk-check-2", request_for("img-00043.png", sandbox=True))
