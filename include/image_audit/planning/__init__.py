"""Planning a run: which catalog images it submits, which it rejects and why, and its batches."""

from image_audit.planning.plan import plan_run
from image_audit.planning.run import PlanOptions, RunContext, RunPlan

__all__ = ["PlanOptions", "RunContext", "RunPlan", "plan_run"]
