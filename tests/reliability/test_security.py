"""Security: nothing forged, replayed or hostile changes the warehouse; odd catalog rows are handled.

The attacks go to the receiver of a real deployment after a real DAG run, with real scan ids;
secret rotation goes through the Copyleaks connection the receiver reads in production.
"""

from __future__ import annotations

import json
import secrets
from datetime import timedelta

import httpx
import pytest
from sqlalchemy import select

from copyleaks_provider.webhooks.auth import webhook_token, webhook_url
from image_audit.warehouse.schema import audit_scans
from image_audit.webhook import create_warehouse_receiver_app
from image_audit_dev.sample_catalog import seed_catalog
from image_audit_dev.servers import BackgroundServer
from tests.support.factories import DAY, result_body, seed_scan
from tests.support.reliability import FIGURES, check_invariants

pytestmark = pytest.mark.slow


def _post(url: str, content: bytes) -> httpx.Response:
    return httpx.post(url, content=content, headers={"content-type": "application/json"}, timeout=60)


def _snapshot(audit) -> tuple:
    scans = sorted((s["scan_id"], s["state"], s["last_error"]) for s in audit.scans())
    results = sorted(
        (r["scan_id"], r["ai"], json.dumps(r["raw_body"], sort_keys=True)) for r in audit.results()
    )
    return scans, results


def test_forged_foreign_replayed_oversized_malformed_and_nested_callbacks_change_no_result(audit):
    audit.seed(6, bad_rows=False)
    assert audit.run(DAY).state == "success"
    check_invariants(audit)
    base, secret = audit.receiver.url, audit.secret
    results = audit.results()
    a, b = results[0], results[1]
    a_id, b_id = a["scan_id"], b["scan_id"]
    a_url = webhook_url(base, secret, a_id)
    before = _snapshot(audit)
    a_body = json.dumps(a["raw_body"]).encode()
    depth = 50_000
    attacks = {
        "forged token": (f"{base}/callbacks/{a_id}/{secrets.token_urlsafe(32)}", a_body, {403}),
        "token of another scan": (f"{base}/callbacks/{a_id}/{webhook_token(secret, b_id)}", a_body, {403}),
        "token of another secret": (webhook_url(base, "guessed-secret", a_id), a_body, {403}),
        "no token": (f"{base}/callbacks/{a_id}", a_body, {401}),
        "replayed result": (a_url, a_body, {200}),
        "replayed to another scan": (webhook_url(base, secret, b_id), a_body, {422}),
        "error after the result": (
            a_url,
            json.dumps(
                {"scannedDocument": {"scanId": a_id}, "error": {"code": 500, "message": "x"}}
            ).encode(),
            {200},
        ),
        "oversized": (a_url, b'{"pad": "' + b"x" * (8 * 1024 * 1024 + 1) + b'"}', {413}),
        # Authentic but unrecognised or unreadable: kept (audit_failed_callbacks, verbatim or as its
        # bytes), never a 4xx that Copyleaks would retry then drop; the scan has its result, which wins,
        # so the scan is unchanged.
        "malformed": (a_url, b'{"scannedDocument": {"scanId": ', {200}),
        "not an object": (a_url, b'["scannedDocument"]', {200}),
        "nested arrays": (a_url, b"[" * depth + b"]" * depth, {200}),
        "nested objects": (a_url, b'{"a":' * depth + b"1" + b"}" * depth, {200}),
        "nested inside a result": (
            a_url,
            a_body[:-1] + b', "extra": ' + b'{"a":' * depth + b"1" + b"}" * depth + b"}",
            {200},
        ),
        "sql in the scan id": (
            webhook_url(base, secret, "x'; DROP TABLE audit_results;--"),
            a_body,
            {404, 422},
        ),
    }
    answers = {name: _post(url, body) for name, (url, body, _) in attacks.items()}
    wrong = {n: (answers[n].status_code, answers[n].text[:120]) for n, (_, _, ok) in attacks.items()}
    wrong = {n: v for n, v in wrong.items() if v[0] not in attacks[n][2]}
    assert wrong == {}
    assert answers["replayed result"].json() == {"status": "duplicate"}
    assert answers["error after the result"].json() == {"status": "duplicate"}
    kept = ("malformed", "not an object", "nested arrays", "nested objects", "nested inside a result")
    assert all(answers[name].json() == {"status": "duplicate"} for name in kept), kept
    assert _snapshot(audit) == before, "no attack may change a scan or a result"
    assert httpx.get(f"{base}/health").status_code == 200, "the receiver survives all of it"
    FIGURES["hostile_callbacks_refused"] += len(attacks)


#: Catalog rows with hostile or odd text. Submittable ones must be planned and stored verbatim; the
#: others rejected with a reason; no SQL error anywhere.
ODD_NAMES = {
    "sqli-quote": "robert'); DROP TABLE audit_scans;--.jpg",
    "sqli-union": 'x" UNION SELECT api_key FROM connection --.png',
    "unicode-cjk": "画像 テスト 🐍.jpg",
    "unicode-rtl": "photo\u202egpj.exe.png",
    "unicode-zero-width": "zero\u200bwidth\u00a0name.webp",
    "unicode-combining": "e\u0301le\u0300ve.jpg",
    "percent-and-backslash": "100% \\ back\\slash.jpg",
}


def _odd_rows(samples: str) -> list[dict]:
    from urllib.parse import quote

    ingested = DAY + timedelta(hours=1)
    rows = [
        {
            "image_id": f"{key}-'; DELETE FROM image_catalog;--",
            "url": f"{samples}/{quote(name)}",
            "file_name": name,
            "source": "src' OR '1'='1",
            "ingested_at": ingested,
            "fetch_headers_ref": None,
        }
        for key, name in ODD_NAMES.items()
    ]
    rejected = {
        "rej-javascript": ("javascript:alert('x')//a.jpg", "a.jpg"),
        "rej-sqli-exe": (f"{samples}/x.exe", "x'; DROP TABLE audit_results;--.exe"),
        "rej-unicode-gif": (f"{samples}/{quote('动图.gif')}", "动图.gif"),
    }
    rows += [
        {"image_id": k, "url": u, "file_name": f, "source": "ünïcødé", "ingested_at": ingested}
        | {"fetch_headers_ref": None}
        for k, (u, f) in rejected.items()
    ]
    return rows


def test_injection_strings_and_odd_unicode_in_the_catalog_are_planned_rejected_and_stored_verbatim(audit):
    rows = _odd_rows(f"{audit.emulator.url}/samples")
    seed_catalog(audit.engine, rows)
    run = audit.run(DAY)
    assert run.state == "success"
    check_invariants(audit)
    by_image = {s["image_id"]: s for s in audit.scans()}
    assert set(by_image) == {r["image_id"] for r in rows}, "every row has its one decision, ids verbatim"
    for row in rows:
        scan = by_image[row["image_id"]]
        assert (scan["url"], scan["file_name"], scan["source"]) == (
            row["url"],
            row["file_name"],
            row["source"],
        )
        if row["image_id"].startswith("rej-"):
            assert scan["state"] == "rejected" and scan["last_error"], scan
        else:
            assert scan["state"] == "completed", scan
    with audit.engine.connect() as conn:  # the tables the strings name are still there
        assert conn.execute(select(audit_scans.c.scan_id)).all()
    assert len(audit.results()) == len(ODD_NAMES)
    report = audit.report(run.run_id)
    assert report["summary"]["rejected_rows"] == 3


def test_webhook_secret_rotation_accepts_old_and_new_until_the_old_is_dropped(
    sqlite_warehouse_url, monkeypatch
):
    """The receiver reads the secrets from the Copyleaks connection, as in production."""
    old, new = secrets.token_urlsafe(16), secrets.token_urlsafe(16)
    for scan_id in ("rot-old", "rot-new", "rot-dropped"):
        seed_scan(sqlite_warehouse_url, scan_id)

    def connection(secret: str, previous: list[str]) -> None:
        extra = {"webhook_secret": secret, "previous_webhook_secrets": previous}
        conn = {"conn_type": "copyleaks", "login": "a@b.c", "password": "k", "extra": extra}
        monkeypatch.setenv("AIRFLOW_CONN_COPYLEAKS_DEFAULT", json.dumps(conn))

    def post(server, secret: str, scan_id: str) -> int:
        return _post(
            webhook_url(server.url, secret, scan_id), json.dumps(result_body(scan_id)).encode()
        ).status_code

    connection(new, [old])  # rotated: scans submitted before still carry tokens of the old secret
    with BackgroundServer(create_warehouse_receiver_app(warehouse_url=sqlite_warehouse_url)) as server:
        assert post(server, old, "rot-old") == 200
        assert post(server, new, "rot-new") == 200
        assert post(server, "never-configured", "rot-dropped") == 403
    connection(new, [])  # grace period over
    with BackgroundServer(create_warehouse_receiver_app(warehouse_url=sqlite_warehouse_url)) as server:
        assert post(server, old, "rot-dropped") == 403
        assert post(server, new, "rot-dropped") == 200
