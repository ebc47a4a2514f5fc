"""The emulator's double-submission counters, which the chaos suite asserts at 0: the same scan id
accepted twice, and one image accepted under a second scan id; an idempotent resend is neither."""

from __future__ import annotations

from copyleaks_emulator.settings import EmulatorSettings
from copyleaks_emulator.state import Admission, EmulatorState, ScanKey


def test_an_idempotent_resend_is_not_a_double_submission_a_second_scan_id_for_an_image_is():
    state = EmulatorState(EmulatorSettings())
    image = ScanKey("http://img.example/a.jpg", "a.jpg", "ai-image-1-ultra")
    assert state.admit("ia1-1", image) is Admission.NEW
    state.accept("ia1-1", image)
    assert state.admit("ia1-1", image) is Admission.REPEAT  # the same request again: 201, nothing new
    assert state.counters["duplicate_submissions"] == 1
    assert state.counters["scan_ids_accepted_twice"] == state.counters["images_accepted_twice"] == 0

    assert state.admit("ia1-2", image) is Admission.NEW  # the same image, another scan id: charged again
    state.accept("ia1-2", image)
    assert state.counters["images_accepted_twice"] == 1

    state.accept("ia1-1", image)  # a scan id registered again (what admit() exists to prevent)
    assert state.counters["scan_ids_accepted_twice"] == 1

    state.reset()
    assert state.counters["images_accepted_twice"] == state.counters["scan_ids_accepted_twice"] == 0
    state.accept("ia1-1", image)
    assert state.counters["images_accepted_twice"] == 0
