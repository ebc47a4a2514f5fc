"""Planning from the command line: check the catalog mapping before a night depends on it.

    python -m image_audit.planning check-catalog              # the Variable image_audit_catalog
    python -m image_audit.planning check-catalog --spec '{"table": "media", "file_name": null}'

Exit 1 with the message ``plan`` would fail with when the Variable names a table or column the
warehouse does not have; else print the mapping planning will use. ``--url`` / ``--conn-id`` name
another warehouse than the deployment's.
"""

from __future__ import annotations

import argparse
import sys

from image_audit.config import add_warehouse_arguments, warehouse_url_of
from image_audit.planning.catalog import CATALOG_VARIABLE, CatalogMappingError, CatalogSpec, checked_spec
from image_audit.warehouse.engine import get_engine


def _variable() -> str | None:
    """The catalog Variable as Airflow holds it (metadata database, ``AIRFLOW_VAR_...``, secrets backend)."""
    from airflow.models.variable import Variable

    return Variable.get(CATALOG_VARIABLE, default_var=None)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m image_audit.planning", description=__doc__.splitlines()[0]
    )
    commands = parser.add_subparsers(dest="command", required=True)
    check = commands.add_parser("check-catalog", help="check the catalog mapping against the warehouse")
    check.add_argument("--spec", help=f"the mapping as JSON (default: the Variable {CATALOG_VARIABLE})")
    add_warehouse_arguments(check)
    args = parser.parse_args(argv)

    text = args.spec if args.spec is not None else _variable()
    engine = get_engine(warehouse_url_of(args))
    try:
        spec = checked_spec(engine, CatalogSpec.from_json(text))
    except CatalogMappingError as exc:
        print(exc, file=sys.stderr)
        return 1
    finally:
        engine.dispose()
    where = f"{spec.schema}.{spec.table}" if spec.schema else spec.table
    columns = ", ".join(f"{key}={name}" for key, name in spec.columns().items())
    print(f"catalog {where}: {columns}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
