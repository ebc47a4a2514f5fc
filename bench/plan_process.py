"""Plan one run over a catalog already seeded in ``--warehouse``, in a process of its own, and print
its peak RSS and timing as JSON (the catalog benchmark's subject, measured alone)."""

from __future__ import annotations

import argparse
import json
import os
import resource
import time
from datetime import datetime

from image_audit.planning import PlanOptions, RunContext, plan_run
from image_audit.planning.catalog import CatalogSpec
from image_audit.warehouse.engine import get_engine


def peak_rss_mib() -> int:
    """This process's peak RSS. Linux's ``ru_maxrss`` carries the parent's over ``exec`` (the bench's
    own, after it seeded a million rows); the high-water mark of this process's memory does not."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return round(int(line.split()[1]) / 1024)
    except OSError:
        pass
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--warehouse", required=True)
    parser.add_argument("--start", required=True, type=datetime.fromisoformat)
    parser.add_argument("--end", required=True, type=datetime.fromisoformat)
    args = parser.parse_args()
    started, cpu = time.perf_counter(), os.times()
    plan = plan_run(
        get_engine(args.warehouse),
        CatalogSpec(),
        RunContext("bench", "bench-plan", args.start, args.end),
        PlanOptions(model="ai-image-1-ultra"),
    )
    spent = os.times()
    print(
        json.dumps(
            {
                "planned": plan.planned,
                "batches": len(plan.batch_ids),
                "rejected": plan.rejected,
                "seconds": round(time.perf_counter() - started, 1),
                # the machine may be shared: the CPU the plan took, beside its wall time
                "cpu_seconds": round(spent.user - cpu.user + spent.system - cpu.system, 1),
                "peak_rss_mib": peak_rss_mib(),
            }
        )
    )


if __name__ == "__main__":
    main()
