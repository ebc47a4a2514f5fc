"""Scan ids computed in the warehouse are ``make_scan_id``'s, for any image id and model.

Planning computes an interval's scan ids in SQL: SQLite calls ``scan_id_stem`` itself (registered on the
connection), PostgreSQL hashes in its own SQL. The ids are stored, so an id computed differently would
submit an image twice: this proves the SQL equal to the Python definition on both backends.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import Column, Integer, MetaData, Table, Text, literal, select

from copyleaks_provider.scan_ids import (
    MAX_ATTEMPT,
    SUPPORTED_MODELS,
    canonical_model,
    make_scan_id,
    scan_id_stem,
)
from image_audit.planning.phases import register_scan_stem, scan_id

#: Image ids as the catalog may hold them, one query's worth. Text a database stores: no lone
#: surrogates (no UTF-8 for them), and no NUL on PostgreSQL (its text has none).
_IDS = Table(
    "scan_id_inputs",
    MetaData(),
    Column("n", Integer, primary_key=True),
    Column("image_id", Text),
    prefixes=["TEMPORARY"],
)


def _text(postgres: bool, **size) -> st.SearchStrategy[str]:
    excluded = "\x00" if postgres else ""
    return st.text(st.characters(exclude_categories=("Cs",), exclude_characters=excluded), **size)


@settings(settings.get_profile("planning"), max_examples=150)
@given(data=st.data())
def test_scan_ids_in_sql_are_make_scan_ids(engine, data):
    postgres = engine.dialect.name == "postgresql"
    image_ids = data.draw(st.lists(_text(postgres, max_size=80), min_size=1, max_size=8), label="image ids")
    model = data.draw(st.sampled_from(sorted(SUPPORTED_MODELS)) | _text(postgres, max_size=64), label="model")
    attempt = data.draw(st.integers(1, MAX_ATTEMPT), label="attempt")
    full_name = canonical_model(model) if model in SUPPORTED_MODELS else model
    with engine.connect() as conn, conn.begin():
        register_scan_stem(conn)
        _IDS.create(conn)
        conn.execute(_IDS.insert(), [{"n": n, "image_id": image_id} for n, image_id in enumerate(image_ids)])
        in_sql = conn.execute(
            select(scan_id(conn, _IDS.c.image_id, full_name, literal(attempt))).order_by(_IDS.c.n)
        ).scalars().all()  # fmt: skip
        _IDS.drop(conn)
    expected = [f"{scan_id_stem(image_id, full_name)}-{attempt}" for image_id in image_ids]
    assert in_sql == expected
    if model in SUPPORTED_MODELS:  # the provider's own id: the alias and the full name agree
        assert in_sql == [make_scan_id(image_id, model, attempt) for image_id in image_ids]
