"""``./run bench [name ...] [--quick] [--large] [--record]``: run the benchmarks and print their figures.

Names: ingest, submit, e2e, catalog, account, report, history (default: all). ``--quick`` runs small sizes (a
smoke run); ``--large`` adds the 100,000-image end-to-end run on PostgreSQL (saved as ``e2e_large``).
Each benchmark's figures are saved as JSON under var/bench/; ``--record`` also writes them to
docs/benchmarks/results/, from which the docs' benchmark tables are built. PostgreSQL figures need
IMAGE_AUDIT_BENCH_POSTGRES_URL (or the tests' URL); the naive-DAG comparison on the local Celery cluster
also needs IMAGE_AUDIT_BENCH_REDIS_URL.
"""

from __future__ import annotations

import argparse
import time

from bench import account_rate, catalog, common, e2e, history, ingest, report, submit
from bench.common import machine, postgres_admin_url

NAMES = ["ingest", "submit", "e2e", "catalog", "account", "report", "history"]


def main() -> None:
    parser = argparse.ArgumentParser(prog="./run bench", description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", choices=[*NAMES, []], default=[])
    parser.add_argument("--quick", action="store_true", help="small sizes: checks the benchmarks run")
    parser.add_argument("--large", action="store_true", help="also 100,000 images end to end on PostgreSQL")
    parser.add_argument(
        "--record",
        action="store_true",
        help="also write each benchmark's JSON to docs/benchmarks/results/ (the docs' tables)",
    )
    args = parser.parse_args()
    names = args.names or NAMES
    if args.large and "e2e" in names and not postgres_admin_url():
        parser.error("--large needs IMAGE_AUDIT_BENCH_POSTGRES_URL")
    common.RUN_OPTIONS.update(quick=args.quick, record=args.record)
    if args.record and args.quick:
        print("Recording a --quick run: the docs' strict build refuses it; delete it before committing.")
    print("Machine:", ", ".join(f"{k} {v}" for k, v in machine().items()))
    started = time.monotonic()
    for name in names:
        if name == "ingest":
            ingest.main(count=1_000 if args.quick else 10_000)
        elif name == "submit":
            submit.main(count=500 if args.quick else 10_000, rounds=1 if args.quick else 2)
        elif name == "e2e":
            sizes = (100,) if args.quick else (1_000, 10_000)
            e2e.main(sizes=sizes, naive_count=50 if args.quick else 1_000, repeats=1 if args.quick else 3)
            if args.large:
                e2e.main(sizes=(100_000,), naive_count=0, backend="postgres", repeats=1, name="e2e_large")
        elif name == "account":
            account_rate.main(per_process=50 if args.quick else 250)
        elif name == "catalog":
            catalog.main(sizes=(10_000, 100_000) if args.quick else (100_000, 1_000_000))
        elif name == "report":
            report.main(count=10_000 if args.quick else 100_000)
        elif name == "history":
            history.main(history=100_000 if args.quick else 10_000_000, night=1_000 if args.quick else 10_000)
    print(f"\nBenchmarks done in {time.monotonic() - started:.0f} s.")


if __name__ == "__main__":
    main()
