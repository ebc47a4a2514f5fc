"""The warehouse's schema from the command line.

    python -m image_audit.warehouse upgrade            # to the newest revision (adopts a legacy one)
    python -m image_audit.warehouse current            # the warehouse's revision, and this code's
    python -m image_audit.warehouse check              # exit 1 unless the warehouse is at this code's
    python -m image_audit.warehouse downgrade 0001     # back to a revision (rolling back a release)

The warehouse is that of the deployment's warehouse connection (``image_audit.config.warehouse_url``);
``--url`` names another (a SQLAlchemy URL), ``--conn-id`` another connection.
"""

from __future__ import annotations

import argparse
import logging
import sys

from alembic.util import CommandError
from sqlalchemy.engine import make_url

from image_audit.config import add_warehouse_arguments, warehouse_url_of
from image_audit.warehouse.engine import get_engine
from image_audit.warehouse.migrations import (
    WarehouseSchemaError,
    current_revision,
    describe,
    downgrade,
    head_revision,
    require_current,
    upgrade,
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m image_audit.warehouse", description="The warehouse's schema revisions"
    )
    where = argparse.ArgumentParser(add_help=False)
    add_warehouse_arguments(where)
    commands = parser.add_subparsers(dest="command", required=True)
    up = commands.add_parser("upgrade", parents=[where], help="upgrade to the newest revision")
    up.add_argument("revision", nargs="?", default="head", help="a revision (default: head)")
    commands.add_parser("current", parents=[where], help="the warehouse's revision and this code's")
    commands.add_parser("check", parents=[where], help="exit 1 unless the warehouse is current")
    down = commands.add_parser("downgrade", parents=[where], help="go back to a revision")
    down.add_argument("revision", help="the revision to go back to (base: drop the pipeline's tables)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    # Each revision run, not Alembic's notes on the dialect.
    logging.getLogger("alembic.runtime.migration").addFilter(lambda record: "Running" in str(record.msg))

    url = warehouse_url_of(args)
    engine = get_engine(url)
    shown = make_url(url).render_as_string(hide_password=True)
    try:
        if args.command == "upgrade":
            before = current_revision(engine)
            upgrade(engine, args.revision)
            after = current_revision(engine)
            change = f"{before or 'none'} -> " if before != after else "already at "
            print(f"warehouse {shown}: {change}{describe(engine)}")
        elif args.command == "downgrade":
            before = current_revision(engine)
            downgrade(engine, args.revision)
            print(f"warehouse {shown}: {before or 'none'} -> {current_revision(engine) or 'none'}")
        elif args.command == "current":
            print(f"warehouse {shown}: {describe(engine)}")
            print(f"this code's head: {head_revision()}")
        else:
            require_current(engine)
            print(f"warehouse {shown}: {describe(engine)}")
    except (WarehouseSchemaError, CommandError) as exc:  # CommandError: e.g. a revision that does not exist
        print(exc, file=sys.stderr)
        return 1
    finally:
        engine.dispose()
    return 0


if __name__ == "__main__":
    sys.exit(main())
