"""The report's thumbnail fetches cannot be turned against the network the worker runs in.

Only loopback servers are ever contacted here; the private and link-local cases are refused by the
address check, before any connection (which is what the tests assert).
"""

from __future__ import annotations

import pytest
from fastapi import FastAPI
from fastapi.responses import RedirectResponse, Response

from image_audit.reporting import build_run_report
from image_audit.reporting.fetch import ALLOW_PRIVATE_ENV, UnsafeImageURL, check_fetchable, http_fetcher
from image_audit.warehouse.engine import get_engine
from image_audit_dev.servers import BackgroundServer
from tests.test_report_fixtures import D1 as DAY
from tests.test_report_fixtures import DAG_ID, R2, Scan, image_png, insert_scans


class _InternalHost:
    """A host the worker can reach but the catalog must not aim it at; counts what it is asked."""

    def __init__(self) -> None:
        self.requests: list[str] = []
        app = FastAPI()

        @app.get("/{path:path}")
        async def anything(path: str) -> Response:
            self.requests.append(path)
            if path.startswith("hop/"):
                left = int(path.removeprefix("hop/"))
                return RedirectResponse(f"/hop/{left - 1}" if left > 1 else "/image.png", status_code=302)
            if path == "to-file":
                return RedirectResponse("file:///etc/passwd", status_code=302)
            return Response(image_png(40, 30, seed=1), media_type="image/png")

        self.server = BackgroundServer(app)


@pytest.fixture(scope="module")
def internal():
    host = _InternalHost()
    with host.server:
        yield host


@pytest.fixture(autouse=True)
def _forget_requests(internal):
    internal.requests.clear()


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8080/admin",
        "http://localhost/",
        "http://[::1]/x.png",
        "http://10.1.2.3/x.png",
        "http://192.168.0.10/x.png",
        "http://172.16.5.4/x.png",
        "http://100.64.0.1/x.png",  # carrier-grade NAT
        "http://169.254.169.254/latest/meta-data/",  # a cloud metadata service
        "http://0.0.0.0/x.png",
    ],
)
def test_non_public_addresses_are_refused(url):
    with pytest.raises(UnsafeImageURL, match="non-public address"):
        check_fetchable(url, allow_private=False)


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://example.com/x.png", "gopher://x/", "http:///x"])
def test_only_http_urls_with_a_host_are_fetched(url):
    with pytest.raises(UnsafeImageURL, match="only http"):
        check_fetchable(url, allow_private=True)


def test_a_public_address_passes_the_check():
    check_fetchable("https://93.184.216.34/image.png", allow_private=False)  # a check only: no request


def test_an_internal_host_is_never_asked(internal):
    with pytest.raises(UnsafeImageURL):
        http_fetcher(allow_private=False)(f"{internal.server.url}/image.png")
    assert internal.requests == []


def test_redirects_are_followed_a_few_times_each_hop_checked(internal):
    fetch = http_fetcher(allow_private=True)
    assert fetch(f"{internal.server.url}/hop/3").startswith(b"\x89PNG")  # 3 redirects: fine
    with pytest.raises(UnsafeImageURL, match="more than 3 redirects"):
        fetch(f"{internal.server.url}/hop/4")
    with pytest.raises(UnsafeImageURL, match="only http"):
        fetch(f"{internal.server.url}/to-file")


def test_private_addresses_are_refused_unless_the_deployment_allows_them(internal, monkeypatch):
    monkeypatch.setenv(ALLOW_PRIVATE_ENV, "true")
    assert http_fetcher()(f"{internal.server.url}/image.png").startswith(b"\x89PNG")
    monkeypatch.delenv(ALLOW_PRIVATE_ENV)
    with pytest.raises(UnsafeImageURL):
        http_fetcher()(f"{internal.server.url}/image.png")


def test_a_catalog_row_pointing_inside_draws_a_placeholder_and_fetches_nothing(
    internal, sqlite_warehouse_url, tmp_path, monkeypatch
):
    monkeypatch.delenv(ALLOW_PRIVATE_ENV)  # a production worker: nothing configured
    engine = get_engine(sqlite_warehouse_url)
    insert_scans(engine, [Scan("inside", "shop", DAY, "completed", ai=0.97)], url_base=internal.server.url)
    report = build_run_report(engine, DAG_ID, R2, out_dir=tmp_path / "refused", top_n=1)
    assert internal.requests == []
    assert report.summary["states"]["completed"] == 1
    assert "inside" in report.html_path.read_text()

    monkeypatch.setenv(ALLOW_PRIVATE_ENV, "true")  # the same report where internal hosts are allowed
    build_run_report(engine, DAG_ID, R2, out_dir=tmp_path / "allowed", top_n=1)
    assert internal.requests == ["img/inside.png"]
