"""SQLAlchemy URLs from Airflow connections: the one reading of a database connection, for the
account state here and for any pipeline that keeps its own database in a connection."""

from __future__ import annotations

from typing import Any

from sqlalchemy.engine import URL


def sqlalchemy_url(connection: Any) -> str | None:
    """The URL of a ``postgres`` or ``sqlite`` connection, or of any connection whose extra holds
    ``sqlalchemy_url``; None for another type (the caller says what it needs). A postgres connection's
    other extras (``sslmode``...) become the URL's query."""
    extra = connection.extra_dejson
    if extra.get("sqlalchemy_url"):
        return str(extra["sqlalchemy_url"])
    if connection.conn_type == "sqlite":  # the file's path: host in Airflow's form, else the URI's path
        return f"sqlite:///{connection.host or connection.schema}"
    if connection.conn_type in ("postgres", "postgresql"):
        return URL.create(
            "postgresql",
            username=connection.login or None,
            password=connection.password or None,
            host=connection.host or None,
            port=connection.port or None,
            database=connection.schema or None,
            query={k: str(v) for k, v in extra.items()},
        ).render_as_string(hide_password=False)
    return None
