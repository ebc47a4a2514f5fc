"""The catalog: the row check says what the hook's validators say, and catalog order is total."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from copyleaks_provider.exceptions import CopyleaksValidationError
from copyleaks_provider.validation import validate_file_name, validate_image_url
from image_audit.planning.__main__ import main
from image_audit.planning.catalog import (
    CatalogMappingError,
    CatalogSpec,
    checked_spec,
    read_catalog,
    row_rejection,
)

DAY = datetime(2026, 11, 23, tzinfo=UTC)
#: Characters URLs are made of here: the scheme's and a host's, what ends a host, whitespace, and
#: letters that only look like ASCII ones (long s, Kelvin sign), which the URL parser may fold.
_URL_ALPHABET = "hHtTpPsS:/.@[]?#%-_~ \t\n0123456789abcxyzé\u017f\u212a" + "jpgnJPGN"
_URLS = st.one_of(
    st.text(_URL_ALPHABET, min_size=1, max_size=24),
    st.text(_URL_ALPHABET, max_size=16).map(lambda rest: "https://" + rest),
    st.text(_URL_ALPHABET, max_size=16).map(lambda path: "https://cdn.example.com/" + path),
    st.sampled_from(["https://[::1]/x.png", "https://h:80/x.png?y=1#z", "https://cdn.example.com:/a.jpg"]),
)
_FILE_NAMES = st.one_of(
    st.sampled_from([None, "", "a.jpg", "b.gif", "c.JPEG", "noext"]), st.text(max_size=12)
)


def _the_hooks_validators(image_id, url, file_name) -> str | None:
    """What the hook refuses of a request, checked by its own validators alone."""
    if not image_id or not str(image_id).strip():
        return "missing image id"
    if not url or not url.strip():
        return "missing URL"
    try:
        validate_image_url(url)
        validate_file_name(file_name or urlsplit(url).path.rsplit("/", 1)[-1])
    except CopyleaksValidationError as exc:
        return str(exc)
    return None


@settings(settings.get_profile("planning"), max_examples=1_000)
@given(url=_URLS, file_name=_FILE_NAMES)
def test_the_row_check_is_the_hooks_validators(url, file_name):
    """``row_rejection`` skips parsing plainly valid URLs: it must still say what the validators say."""
    try:
        expected = _the_hooks_validators("img-1", url, file_name)
    except ValueError:  # urlsplit refuses it: so must the row check
        with pytest.raises(ValueError):
            row_rejection("img-1", url, file_name)
        return
    assert row_rejection("img-1", url, file_name) == expected


@pytest.mark.parametrize("image_id", [None, "", "   ", "\t"])
def test_a_row_without_an_image_id_is_rejected(image_id):
    assert row_rejection(image_id, "https://h/a.jpg", "a.jpg") == "missing image id"


def test_catalog_order_is_ingestion_then_id_url_and_file_name(engine, team_catalog):
    """Rows ingested at the same time come in image id, URL and file name order: planning's "first row
    of a duplicate set" is always the same row."""
    later = DAY + timedelta(minutes=1)
    rows = [
        {"image_id": "b", "url": "https://h/1.jpg", "file_name": "a.jpg", "ingested_at": DAY},
        {"image_id": "a", "url": "https://h/2.jpg", "file_name": "b.jpg", "ingested_at": later},
        {"image_id": "a", "url": "https://h/2.jpg", "file_name": "a.jpg", "ingested_at": later},
        {"image_id": "a", "url": "https://h/1.jpg", "file_name": "c.jpg", "ingested_at": later},
        {"image_id": "c", "url": "https://h/0.jpg", "file_name": "a.jpg", "ingested_at": DAY},
    ]
    with engine.begin() as conn:
        conn.execute(team_catalog.table.insert(), rows)
    read = read_catalog(engine, team_catalog.spec, DAY, DAY + timedelta(days=1))
    assert [(row.image_id, row.url, row.file_name) for row in read] == [
        ("b", "https://h/1.jpg", "a.jpg"),
        ("c", "https://h/0.jpg", "a.jpg"),
        ("a", "https://h/1.jpg", "c.jpg"),
        ("a", "https://h/2.jpg", "a.jpg"),
        ("a", "https://h/2.jpg", "b.jpg"),
    ]


# --- the mapping checked against the table's real columns --------------------------------------------
def _table(engine, *columns: str) -> None:
    from sqlalchemy import Column, DateTime, MetaData, Table, Text

    types = {name: DateTime(timezone=True) if name == "ingested_at" else Text for name in columns}
    Table("media", MetaData(), *(Column(name, kind) for name, kind in types.items())).create(engine)


def test_an_optional_column_the_table_lacks_is_absent_when_its_key_is_omitted(engine):
    _table(engine, "image_id", "url", "ingested_at")
    spec = checked_spec(engine, CatalogSpec.from_dict({"table": "media"}))
    assert (spec.file_name, spec.source, spec.fetch_headers_ref) == (None, None, None)
    assert (spec.image_id, spec.url, spec.ingested_at) == ("image_id", "url", "ingested_at")


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"table": "media", "fetch_headers_ref": "fetch_headers_ref"}, "'fetch_headers_ref' of the Variable"),
        ({"table": "media", "url": "image_url"}, "no column 'image_url' (the key 'url' of the Variable"),
        ({"table": "media", "source": "origin"}, "or to null if it has none"),
        ({"table": "pictures"}, "the catalog table 'pictures' does not exist"),
    ],
)
def test_any_other_mismatch_names_the_variable_key_the_column_and_the_table(engine, settings, message):
    _table(engine, "image_id", "url", "ingested_at", "source")
    with pytest.raises(CatalogMappingError) as raised:
        checked_spec(engine, CatalogSpec.from_dict(settings))
    assert message in str(raised.value) and "image_audit_catalog" in str(raised.value)


def test_a_required_column_left_at_its_default_is_named_as_such(engine):
    _table(engine, "id", "url", "ingested_at")
    with pytest.raises(CatalogMappingError) as raised:
        checked_spec(engine, CatalogSpec.from_dict({"table": "media"}))
    expected = (
        "no column 'image_id' (the key 'image_id' of the Variable image_audit_catalog, unset: its default)"
    )
    assert expected in str(raised.value)


def test_an_unknown_key_or_a_value_that_is_not_an_object_is_a_mapping_error():
    with pytest.raises(CatalogMappingError, match=r"unknown key.*'columns'"):
        CatalogSpec.from_dict({"columns": ["a"]})
    with pytest.raises(CatalogMappingError, match="must be a JSON object"):
        CatalogSpec.from_dict(["media"])


def test_the_variables_text_that_is_not_json_is_a_mapping_error_and_no_text_is_every_default():
    assert CatalogSpec.from_json(None) == CatalogSpec.from_dict(None)
    assert CatalogSpec.from_json('{"table": "media"}').table == "media"
    with pytest.raises(CatalogMappingError, match="the Variable image_audit_catalog is not valid JSON"):
        CatalogSpec.from_json("{table: media}")


def test_the_command_line_checks_a_mapping_before_a_night_depends_on_it(warehouse_url, engine, capsys):
    _table(engine, "image_id", "url", "ingested_at")
    ok = main(["check-catalog", "--url", warehouse_url, "--spec", '{"table": "media"}'])
    assert (
        ok == 0
        and "catalog media: image_id=image_id, url=url, ingested_at=ingested_at, file_name=None"
        in (capsys.readouterr().out)
    )
    bad = main(["check-catalog", "--url", warehouse_url, "--spec", '{"table": "media", "source": "origin"}'])
    assert bad == 1 and "no column 'origin'" in capsys.readouterr().err
