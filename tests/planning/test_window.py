"""The submission window: how many submissions fit a run's window at the account's rate, exactly."""

from __future__ import annotations

import pytest

from image_audit.planning.window import submission_capacity, submission_minutes


@pytest.mark.parametrize(
    ("rate", "minutes", "capacity"),
    [
        (10, 360, 201_139),  # floor(10 * 60 * 360 * 0.96 * 0.97), exactly: no float off-by-one
        (10, 60, 33_523),
        (10, 0.01, 5),  # 5.59
        (2.5, 7, 977),  # 977.8
        (0.1, 3, 16),  # 16.76
        (10, 0, 0),
    ],
)
def test_submission_capacity_arithmetic(rate, minutes, capacity):
    assert submission_capacity(rate, minutes) == capacity


def test_submission_minutes_is_the_inverse_rounded_up():
    assert submission_minutes(12_400, 10) == 23  # 12,400 / 558.72 per minute = 22.2
    assert submission_minutes(201_139, 10) == 360 and submission_minutes(201_140, 10) == 361
    assert submission_minutes(0, 10) == 0 and submission_minutes(5, 0) is None
