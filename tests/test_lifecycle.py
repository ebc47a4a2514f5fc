"""The scan lifecycle module is the one place the lifecycle is written down; the README shows it."""

from __future__ import annotations

from pathlib import Path

from image_audit.warehouse.lifecycle import TERMINAL_STATES, TRANSITIONS, WAITING_STATES, ScanState, mermaid

ROOT = Path(__file__).resolve().parents[1]


def test_the_readme_diagram_is_the_lifecycle_module():
    assert f"```mermaid\n{mermaid()}\n```" in (ROOT / "README.md").read_text()


def test_every_state_is_reached_and_only_waiting_states_wait():
    assert {t.target for t in TRANSITIONS} == set(ScanState)
    assert set(ScanState) == TERMINAL_STATES | WAITING_STATES and not TERMINAL_STATES & WAITING_STATES
    # An attempt never goes back to pending: a retry is a new row.
    assert not [t for t in TRANSITIONS if t.source is not None and t.target == ScanState.PENDING]
    # Only a result leaves a terminal state (a result always wins).
    assert {t.target for t in TRANSITIONS if t.source == ScanState.TIMED_OUT} <= {
        ScanState.COMPLETED,
        ScanState.FAILED,
    }
    assert {t.target for t in TRANSITIONS if t.source == ScanState.FAILED} == {ScanState.COMPLETED}
    assert not [t for t in TRANSITIONS if t.source in (ScanState.COMPLETED, ScanState.REJECTED)]


def test_each_transition_names_a_module_that_writes_that_state():
    for transition in TRANSITIONS:
        path = ROOT / "include" / (transition.module.replace(".", "/") + ".py")
        assert f"ScanState.{transition.target.name}" in path.read_text(), transition
