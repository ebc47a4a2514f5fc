"""The analysts' audit report: per-run aggregates, charts, heatmap overlays, HTML, CSV and Parquet."""

from image_audit.reporting.report import AccountBalance, RunReport, build_run_report
from image_audit.warehouse.verdicts import Thresholds, Verdict

__all__ = ["AccountBalance", "RunReport", "Thresholds", "Verdict", "build_run_report"]
