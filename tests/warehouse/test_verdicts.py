"""The verdict rule at its edges, and its thresholds."""

from __future__ import annotations

import math

import pytest

from image_audit.reporting import Thresholds
from image_audit.warehouse.verdicts import Verdict, verdict_of


@pytest.mark.parametrize(
    ("ai", "mask_area", "expected"),
    [
        (0.9, 0.9, Verdict.AI_GENERATED),
        (math.nextafter(0.9, 0), 0.9, Verdict.PARTLY_AI),
        (0.2, 0.2, Verdict.PARTLY_AI),
        (math.nextafter(0.2, 0), 0.0, Verdict.HUMAN),
        (0.01, 0.05, Verdict.PARTLY_AI),
        (0.01, math.nextafter(0.05, 0), Verdict.HUMAN),
    ],
)
def test_verdict_rule_edges(ai, mask_area, expected):
    assert verdict_of(ai, mask_area, Thresholds()) is expected


def test_thresholds_must_be_ordered():
    with pytest.raises(ValueError, match="partly_ai"):
        Thresholds(ai_generated=0.3, partly_ai=0.5)
