"""The image catalog: the data team's own table, named by a ``CatalogSpec``; the rows of an interval
in catalog order; and the row check, by which a bad row is rejected with its reason, never dropped.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field, fields, replace
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import DateTime, Engine, Select, column, inspect, null, select, table
from sqlalchemy.sql.elements import quoted_name

from copyleaks_provider.exceptions import CopyleaksValidationError
from copyleaks_provider.validation import validate_file_name, validate_image_url

#: The Airflow Variable holding a deployment's ``CatalogSpec`` (JSON with its keys).
CATALOG_VARIABLE = "image_audit_catalog"
#: Columns a catalog row cannot do without; the others are optional.
REQUIRED_COLUMNS = ("image_id", "url", "ingested_at")


class CatalogMappingError(ValueError):
    """The catalog Variable names a table or column the warehouse does not have: a configuration error,
    so planning fails at once instead of retrying."""


@dataclass(frozen=True)
class CatalogSpec:
    """Where the catalog lives: table and column names (teams have their own table).

    Set it per deployment with the Airflow Variable ``image_audit_catalog`` (JSON with these keys).
    ``file_name``, ``source`` and ``fetch_headers_ref`` columns may be ``None`` when the table has none.
    ``given``: the keys the settings named; an optional column left at its default may be absent.
    """

    table: str = "image_catalog"
    schema: str | None = None
    image_id: str = "image_id"
    url: str = "url"
    file_name: str | None = "file_name"
    source: str | None = "source"
    ingested_at: str = "ingested_at"
    fetch_headers_ref: str | None = "fetch_headers_ref"
    given: frozenset[str] = field(default=frozenset(), compare=False, repr=False)

    @classmethod
    def from_dict(cls, values: dict[str, Any] | None) -> CatalogSpec:
        """The spec of these settings (the Variable's JSON); ``CatalogMappingError`` for an unknown key."""
        values = values or {}
        if not isinstance(values, dict):
            raise CatalogMappingError(f"the Variable {CATALOG_VARIABLE} must be a JSON object of settings")
        known = {f.name for f in fields(cls) if f.name != "given"}
        unknown = set(values) - known
        if unknown:
            raise CatalogMappingError(
                f"unknown key(s) {sorted(unknown)} in the Variable {CATALOG_VARIABLE}; known: {sorted(known)}"
            )
        return cls(**values, given=frozenset(values))

    @classmethod
    def from_json(cls, text: str | None) -> CatalogSpec:
        """The spec of the Variable's text (None: unset, every default); ``CatalogMappingError`` for text
        that is not JSON, or JSON :meth:`from_dict` refuses."""
        try:
            values = None if text is None else json.loads(text)
        except ValueError as exc:
            raise CatalogMappingError(f"the Variable {CATALOG_VARIABLE} is not valid JSON ({exc})") from None
        return cls.from_dict(values)

    def columns(self) -> dict[str, str | None]:
        """The column of each row field (``None``: the table has none)."""
        keys = (*REQUIRED_COLUMNS, "file_name", "source", "fetch_headers_ref")
        return {key: getattr(self, key) for key in keys}


def checked_spec(engine: Engine, spec: CatalogSpec) -> CatalogSpec:
    """``spec`` checked against the table's real columns: an optional column that is absent, its key
    not given, becomes ``None``; any other mismatch raises ``CatalogMappingError`` naming the Variable's
    key, the column and the table."""
    where = f"{spec.schema}.{spec.table}" if spec.schema else spec.table
    inspector = inspect(engine)
    if not inspector.has_table(spec.table, schema=spec.schema):
        given = "" if "table" in spec.given else " (unset: its default)"
        raise CatalogMappingError(
            f"the catalog table {where!r} does not exist in the warehouse: set the key 'table'{given} of "
            f"the Variable {CATALOG_VARIABLE} to your catalog table"
        )
    present = {column["name"] for column in inspector.get_columns(spec.table, schema=spec.schema)}
    absent = {}
    for key, name in spec.columns().items():
        if name is None or name in present:
            continue
        if key not in REQUIRED_COLUMNS and key not in spec.given:
            absent[key] = None
            continue
        given = "" if key in spec.given else ", unset: its default"
        raise CatalogMappingError(
            f"the catalog table {where!r} has no column {name!r} (the key {key!r} of the Variable "
            f"{CATALOG_VARIABLE}{given}): set {key!r} to one of its columns"
            + ("" if key in REQUIRED_COLUMNS else " or to null if it has none")
        )
    return replace(spec, **absent) if absent else spec


@dataclass(frozen=True)
class CatalogRow:
    """One catalog row as ``read_catalog`` yields it (``None`` for a column the spec lacks)."""

    image_id: str | None
    url: str | None
    file_name: str | None
    source: str | None
    ingested_at: datetime | None
    fetch_headers_ref: str | None


def catalog_query(
    spec: CatalogSpec,
    interval_start: datetime,
    interval_end: datetime,
    *,
    source_filter: str | None = None,
    limit: int | None = None,
) -> Select:
    """The rows ingested in ``[interval_start, interval_end)`` in catalog order, labelled as
    ``CatalogRow``'s fields (NULL for a column the spec lacks): read by ``read_catalog``, and copied by
    planning in SQL."""
    names = {
        "image_id": spec.image_id,
        "url": spec.url,
        "file_name": spec.file_name,
        "source": spec.source,
        "ingested_at": spec.ingested_at,
        "fetch_headers_ref": spec.fetch_headers_ref,
    }
    cols = {
        key: column(quoted_name(name, quote=None), DateTime(timezone=True) if key == "ingested_at" else None)
        for key, name in names.items()
        if name
    }
    source_table = table(spec.table, *cols.values(), schema=spec.schema)
    query = (
        select(*(cols[key].label(key) if key in cols else null().label(key) for key in names))
        .select_from(source_table)
        .where(cols["ingested_at"] >= interval_start, cols["ingested_at"] < interval_end)
        .order_by(*catalog_order(cols))
    )
    if source_filter:
        if "source" not in cols:
            raise ValueError("source_filter was given but the catalog spec has no source column")
        query = query.where(cols["source"] == source_filter)
    if limit:
        query = query.limit(limit)
    return query


def catalog_order(cols) -> tuple:
    """Catalog order: oldest ingestion first, then image id, URL and file name. Total for rows that
    differ in what planning checks, so "the first row of a duplicate set" is always the same one."""
    return tuple(cols[key] for key in ("ingested_at", "image_id", "url", "file_name") if key in cols)


def read_catalog(
    engine: Engine,
    spec: CatalogSpec,
    interval_start: datetime,
    interval_end: datetime,
    *,
    source_filter: str | None = None,
    limit: int | None = None,
    chunk_size: int = 5_000,
) -> Iterator[CatalogRow]:
    """Rows ingested in ``[interval_start, interval_end)``, in catalog order, streamed in chunks."""
    query = catalog_query(spec, interval_start, interval_end, source_filter=source_filter, limit=limit)
    with engine.connect() as conn:
        result = conn.execution_options(stream_results=True, yield_per=chunk_size).execute(query)
        for row in result:
            yield CatalogRow(*row)


def url_file_name(url: str | None) -> str:
    """The last segment of the URL's path: the file name of a row without one."""
    return urlsplit(url or "").path.rsplit("/", 1)[-1]


#: The longest image id, file name or source the warehouse keeps (``audit_scans``' 255-character
#: columns). A longer image id rejects its row; the text of a rejected row and a longer source are cut.
MAX_TEXT = 255


#: URLs ``validate_image_url`` certainly accepts (http(s), a plain host): checked without parsing.
_PLAIN_URL = re.compile(r"https?://[A-Za-z0-9._~-]+(?::[0-9]*)?(?:[/?#]|\Z)")


def row_rejection(image_id: Any, url: str | None, file_name: str | None) -> str | None:
    """Why a catalog row cannot be submitted (``None`` when it can): the hook's own request rules, so
    no row that planning accepts is refused before it is sent. A plainly valid URL skips the parser,
    as planning checks every row of the interval."""
    if not image_id or not str(image_id).strip():
        return "missing image id"
    if len(str(image_id)) > MAX_TEXT:
        return f"image id longer than {MAX_TEXT} characters"
    if not url or not url.strip():
        return "missing URL"
    try:
        if not _PLAIN_URL.match(url):
            validate_image_url(url)
        validate_file_name(file_name or url_file_name(url))
    except CopyleaksValidationError as exc:
        return str(exc)
    return None
