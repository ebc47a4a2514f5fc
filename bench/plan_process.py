"""Plan one run over a catalog already seeded in ``--warehouse``, in a process of its own, and print
its peak RSS and timing as JSON (the catalog benchmark's subject, measured alone)."""

from __future__ import annotations

import argparse
import json
import resource
import time
from datetime import datetime

from image_audit.catalog import CatalogSpec
from image_audit.planning import PlanOptions, RunContext, plan_run
from image_audit.warehouse.engine import get_engine


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--warehouse", required=True)
    parser.add_argument("--start", required=True, type=datetime.fromisoformat)
    parser.add_argument("--end", required=True, type=datetime.fromisoformat)
    args = parser.parse_args()
    started = time.perf_counter()
    plan = plan_run(
        get_engine(args.warehouse),
        CatalogSpec(),
        RunContext("bench", "bench-plan", args.start, args.end),
        PlanOptions(model="ai-image-1-ultra"),
    )
    print(
        json.dumps(
            {
                "planned": plan.planned,
                "batches": len(plan.batch_ids),
                "rejected": plan.rejected,
                "seconds": round(time.perf_counter() - started, 1),
                "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
            }
        )
    )


if __name__ == "__main__":
    main()
