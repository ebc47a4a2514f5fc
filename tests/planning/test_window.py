"""The submission window: how many submissions fit a run's window at the account's rate, exactly."""

from __future__ import annotations

import pytest

from image_audit.planning.window import submission_capacity, submission_minutes


@pytest.mark.parametrize(
    ("rate", "minutes", "capacity"),
    [
        (10, 360, 200_091),  # floor(10 * 60 * 360 * 0.955 * 0.97), exactly: no float off-by-one
        (10, 60, 33_348),
        (10, 0.01, 5),  # 5.56
        (2.5, 7, 972),  # 972.7
        (0.1, 3, 16),  # 16.67
        (10, 0, 0),
    ],
)
def test_submission_capacity_arithmetic(rate, minutes, capacity):
    assert submission_capacity(rate, minutes) == capacity


def test_submission_minutes_is_the_inverse_rounded_up():
    assert submission_minutes(12_400, 10) == 23  # 12,400 / 555.81 per minute = 22.3
    assert submission_minutes(200_091, 10) == 360 and submission_minutes(200_092, 10) == 361
    assert submission_minutes(0, 10) == 0 and submission_minutes(5, 0) is None
