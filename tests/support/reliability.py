"""The reliability suite's figures and the invariants every fault scenario must keep.

The figures (faults injected, callbacks sent, results stored, lost, duplicates, double submissions,
secret hits) are summed over the session and printed at the end of the pytest run by tests/conftest.py
(the one conftest pytest-xdist's controller loads; each worker hands its figures over).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass

from image_audit.warehouse.lifecycle import ScanState

#: Figures summed over the session; printed by ``tests/conftest.py``'s ``pytest_terminal_summary``.
FIGURES: Counter[str] = Counter()
FIGURE_ORDER = (
    "faults_injected",
    "callbacks_sent",
    "results_stored",
    "lost",
    "duplicates",
    "double_submissions",
    "secret_hits",
)

#: Copyleaks-side API faults of the suite's scenarios: 10% 429 (with a short Retry-After) and 5% 5xx.
API_FAULTS = {"p_429": 0.1, "p_5xx": 0.05, "retry_after_seconds": 0.2}

#: What an image may end in once the runs are over (``timed_out`` only between runs).
FINAL_STATES = {ScanState.COMPLETED.value, ScanState.FAILED.value, ScanState.REJECTED.value}


@dataclass
class Outcome:
    """What a scenario ended with; ``check_invariants`` asserts the zeros."""

    lost: int
    duplicates: int
    double_submissions: int
    results_stored: int
    not_final: list[str]


def catalog_image_ids(engine) -> set[str]:
    from sqlalchemy import select

    from image_audit.warehouse.schema import image_catalog

    with engine.connect() as conn:
        return {r[0] for r in conn.execute(select(image_catalog.c.image_id))}


def check_invariants(audit, *, extra_faults: int = 0) -> Outcome:
    """After a scenario: every image final, nothing lost, nothing stored twice, nothing submitted twice.

    - every catalog image's latest attempt is completed, failed or rejected;
    - lost: results Copyleaks delivered (scans it finished minus webhooks it dropped on purpose) that
      are not in the warehouse as a result row or a failed scan, plus completed scans without a row;
    - duplicates: result rows beyond one per scan;
    - double submissions: an image sent under more scan ids than its superseded (timed-out) attempts
      explain (a lost scan resubmitted by design is allowed), or a scan id the warehouse does not know
      (re-sending the same scan id is idempotent and counted apart).
    Adds the figures to the session's totals and returns them.
    """
    state = audit.emulator.wait_idle()
    scans, results = audit.scans(), audit.results()

    latest: dict[str, dict] = {}
    for scan in sorted(scans, key=lambda s: s["attempt"]):
        latest[scan["image_id"]] = scan
    images = catalog_image_ids(audit.engine)
    not_final = sorted(i for i in images if i not in latest or latest[i]["state"] not in FINAL_STATES)

    result_ids = Counter(r["scan_id"] for r in results)
    completed = {s["scan_id"] for s in scans if s["state"] == ScanState.COMPLETED.value}
    failed_by_copyleaks = {
        s["scan_id"]
        for s in scans
        if s["state"] == ScanState.FAILED.value and (s["last_error"] or "").startswith("Copyleaks error")
    }
    delivered = state["scans_completed"] + state["scans_failed"] - state["webhooks_dropped"]
    stored = len(result_ids) + len(failed_by_copyleaks)
    lost = max(delivered - stored, 0) + len(completed - set(result_ids))
    duplicates = sum(n - 1 for n in result_ids.values())

    image_of = {s["scan_id"]: s["image_id"] for s in scans}
    submitted_ids_by_image: dict[str, set[str]] = defaultdict(set)
    for scan_id in state["submissions"]:
        submitted_ids_by_image[image_of.get(scan_id, f"?{scan_id}")].add(scan_id)
    # A new attempt (a new scan id) is made only for a scan that timed out: those are by design.
    superseded = Counter(s["image_id"] for s in scans if s["attempt"] < latest[s["image_id"]]["attempt"])
    double = sum(max(len(ids) - 1 - superseded[image], 0) for image, ids in submitted_ids_by_image.items())
    double += sum(1 for image in submitted_ids_by_image if image.startswith("?"))

    FIGURES["faults_injected"] += (
        state["injected_429"]
        + state["injected_5xx"]
        + state["webhooks_dropped"]
        + state["webhooks_duplicated"]
        + state["webhooks_delayed"]
        + extra_faults
    )
    FIGURES["callbacks_sent"] += state["webhooks_sent"]
    FIGURES["results_stored"] += len(results)
    FIGURES["lost"] += lost
    FIGURES["duplicates"] += duplicates
    FIGURES["double_submissions"] += double
    FIGURES["idempotent_resubmissions"] += state["duplicate_submissions"]
    FIGURES["duplicate_callbacks_absorbed"] += max(state["webhooks_acknowledged"] - stored, 0)
    outcome = Outcome(lost, duplicates, double, len(results), not_final)
    assert not_final == [], f"images not in a final state: {not_final[:10]}"
    assert (lost, duplicates, double) == (0, 0, 0), outcome
    assert stored <= state["webhooks_acknowledged"]
    return outcome


def reconnect(monkeypatch, **changes) -> None:
    """Change the Copyleaks connection the DAG's tasks read (``extra``: keys of its extra to change)."""
    import json
    import os

    connection = json.loads(os.environ["AIRFLOW_CONN_COPYLEAKS_DEFAULT"])
    extra = changes.pop("extra", {})
    connection.update(changes)
    connection["extra"].update(extra)
    monkeypatch.setenv("AIRFLOW_CONN_COPYLEAKS_DEFAULT", json.dumps(connection))
