"""The report's thumbnail fetches cannot be turned against the network the worker runs in, nor held
by a host that answers slowly, and one scan's stored data cannot fail the report.

Only servers on this machine are ever contacted here: the private and link-local cases are refused by
the address check, before any connection (which is what the tests assert); names are answered by a
stand-in for DNS, and connections to any address off this machine are refused (:class:`_FakeDNS`).
"""

from __future__ import annotations

import ipaddress
import socket
import socketserver
import ssl
import threading
import time
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace
from urllib.parse import quote

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from fastapi import FastAPI
from fastapi.responses import RedirectResponse, Response

from image_audit.reporting import build_run_report
from image_audit.reporting import report as report_module
from image_audit.reporting.fetch import ALLOW_PRIVATE_ENV, UnsafeImageURL, check_fetchable, http_fetcher
from image_audit.reporting.overlays import placeholder, to_data_uri
from image_audit.warehouse.engine import get_engine
from image_audit.warehouse.schema import audit_results
from image_audit_dev.servers import BackgroundServer
from tests.support.reports import D1 as DAY
from tests.support.reports import DAG_ID, R2, Scan, image_png, insert_report_scans

#: A public address (example.com's of old) that a name may claim; never connected to here.
PUBLIC = "93.184.216.34"
#: "straße.example" as the socket module looks it up (IDNA 2003) and as httpx sends it (IDNA 2008).
IDNA_2003, IDNA_2008 = "strasse.example", "xn--strae-oqa.example"


class _InternalHost:
    """A host the worker can reach but the catalog must not aim it at; counts what it is asked."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.requests: list[str] = []
        app = FastAPI()

        @app.get("/{path:path}")
        async def anything(path: str, to: str | None = None) -> Response:
            self.requests.append(path)
            if path.startswith("hop/"):
                left = int(path.removeprefix("hop/"))
                return RedirectResponse(f"/hop/{left - 1}" if left > 1 else "/image.png", status_code=302)
            if path == "to-file":
                return RedirectResponse("file:///etc/passwd", status_code=302)
            if path == "redirect":
                return RedirectResponse(to, status_code=302)
            return Response(image_png(40, 30, seed=1), media_type="image/png")

        self.server = BackgroundServer(app, host=host)


class _SlowHost:
    """Answers 200 with its headers, then one byte of body a second for as long as the client waits."""

    def __init__(self) -> None:
        stopped = self.stopped = threading.Event()

        class Trickle(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                self.request.recv(65536)
                try:
                    self.request.sendall(
                        b"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nContent-Length: 100000\r\n\r\n"
                    )
                    while not stopped.wait(1.0):  # the behaviour under test: a byte a second
                        self.request.sendall(b"\x89")
                except OSError:  # the client gave up
                    return

        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Trickle)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> _SlowHost:
        threading.Thread(target=self.server.serve_forever, name="slow-host", daemon=True).start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.stopped.set()  # its clients get the end of the stream, and their threads end
        self.server.shutdown()
        self.server.server_close()


class _FakeDNS:
    """``socket.getaddrinfo`` answering the names in :attr:`answers` (one address per lookup, the last
    repeated), spelled as the socket module looks them up (IDNA 2003), other names and addresses as
    usual; and ``socket.create_connection`` refusing any address off this machine, so no test leaves it."""

    def __init__(self, monkeypatch) -> None:
        self.answers: dict[str, list[str]] = {}
        self.lookups: list[str] = []
        real_getaddrinfo, real_connect = socket.getaddrinfo, socket.create_connection

        def getaddrinfo(host, port, family=0, type=0, proto=0, flags=0):
            name = host.decode("ascii") if isinstance(host, bytes) else host.encode("idna").decode("ascii")
            if name not in self.answers:
                return real_getaddrinfo(host, port, family, type, proto, flags)
            self.lookups.append(name)
            answers = self.answers[name]
            address = answers.pop(0) if len(answers) > 1 else answers[0]
            return [(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (address, int(port or 0)))]

        def create_connection(address, *args, **kwargs):
            try:
                off_machine = not ipaddress.ip_address(address[0]).is_loopback
            except ValueError:  # a name: real_connect looks it up with getaddrinfo above
                off_machine = False
            if off_machine:
                raise ConnectionRefusedError(f"the tests do not connect to {address[0]}")
            return real_connect(address, *args, **kwargs)

        monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
        monkeypatch.setattr(socket, "create_connection", create_connection)


@pytest.fixture(scope="module")
def internal():
    host = _InternalHost()
    with host.server:
        yield host


@pytest.fixture(scope="module")
def front():
    """Another host on this machine, which :func:`counted_public` makes count as a public image host."""
    host = _InternalHost("127.0.0.2")
    with host.server:
        yield host


@pytest.fixture(scope="module")
def slow():
    with _SlowHost() as host:
        yield host


@pytest.fixture
def fake_dns(monkeypatch):
    return _FakeDNS(monkeypatch)


@pytest.fixture
def counted_public(front, monkeypatch):
    """``front``'s address counts as public (``is_global``) for the test, as an image CDN's would."""
    is_global = ipaddress.IPv4Address.is_global
    monkeypatch.setattr(
        ipaddress.IPv4Address,
        "is_global",
        property(lambda ip: str(ip) == front.server.host or is_global.fget(ip)),
    )


@pytest.fixture(autouse=True)
def _forget_requests(internal, front):
    internal.requests.clear()
    front.requests.clear()


def _outcome_within(seconds: float, call) -> dict:
    """``{"value": ...}`` or ``{"error": ...}`` of ``call()``; a failure when it takes longer than
    ``seconds`` (its thread is then left to end with the server it waits on)."""
    outcome: dict = {}

    def run() -> None:
        try:
            outcome["value"] = call()
        except Exception as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"still running after {seconds} s"
    return outcome


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
    insert_report_scans(
        engine, [Scan("inside", "shop", DAY, "completed", ai=0.97)], url_base=internal.server.url
    )
    report = build_run_report(engine, DAG_ID, R2, out_dir=tmp_path / "refused", top_n=1)
    assert internal.requests == []
    assert report.summary["states"]["completed"] == 1
    assert "inside" in report.html_path.read_text()

    monkeypatch.setenv(ALLOW_PRIVATE_ENV, "true")  # the same report where internal hosts are allowed
    build_run_report(engine, DAG_ID, R2, out_dir=tmp_path / "allowed", top_n=1)
    assert internal.requests == ["img/inside.png"]


# --- the address connected to is the one vetted -------------------------------------------------------


def test_a_name_spelled_two_ways_is_vetted_as_it_is_sent(internal, fake_dns):
    """IDNA 2003 (the socket module) looks up "strasse", IDNA 2008 (httpx) connects to "xn--strae-oqa":
    the fetch looks up the name it connects to, once."""
    fake_dns.answers |= {IDNA_2003: [PUBLIC], IDNA_2008: ["127.0.0.1"]}
    url = f"http://straße.example:{internal.server.port}/image.png"
    with pytest.raises(UnsafeImageURL, match="non-public address"):
        http_fetcher(allow_private=False)(url)
    assert internal.requests == []
    assert fake_dns.lookups == [IDNA_2008]
    with pytest.raises(UnsafeImageURL, match="non-public address"):
        check_fetchable(url, allow_private=False)


def test_a_name_that_rebinds_is_connected_to_at_the_address_vetted(internal, fake_dns):
    """A DNS answer that turns private after the check: looked up once, the public answer is the one
    connected to (refused here, off this machine)."""
    fake_dns.answers["rebind.example"] = [PUBLIC, "127.0.0.1"]
    with pytest.raises(httpx.ConnectError, match=f"do not connect to {PUBLIC}"):
        http_fetcher(allow_private=False)(f"http://rebind.example:{internal.server.port}/image.png")
    assert internal.requests == []
    assert fake_dns.lookups == ["rebind.example"]


def test_every_redirect_hop_connects_only_to_what_it_vetted(internal, front, fake_dns, counted_public):
    fake_dns.answers |= {"rebind.example": [PUBLIC, "127.0.0.1"], "inside.example": ["127.0.0.1"]}
    fetch = http_fetcher(allow_private=False)
    assert fetch(f"{front.server.url}/image.png").startswith(b"\x89PNG")  # the public host itself: fine

    rebinding = quote(f"http://rebind.example:{internal.server.port}/image.png")
    with pytest.raises(httpx.ConnectError, match=f"do not connect to {PUBLIC}"):
        fetch(f"{front.server.url}/redirect?to={rebinding}")
    inside = quote(f"http://inside.example:{internal.server.port}/image.png")
    with pytest.raises(UnsafeImageURL, match="non-public address"):
        fetch(f"{front.server.url}/redirect?to={inside}")
    assert front.requests == ["image.png", "redirect", "redirect"]
    assert internal.requests == []


@pytest.fixture(scope="module")
def tls_host(tmp_path_factory):
    """An https server whose (self-signed) certificate is for images.example only; records the names
    its clients ask for (SNI)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "images.example")])
    now = datetime.now(UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(hours=1))
        .not_valid_after(now + timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("images.example")]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    folder = tmp_path_factory.mktemp("tls")
    cert_file, key_file = folder / "cert.pem", folder / "key.pem"
    cert_file.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    server_names: list[str | None] = []
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_file, key_file)
    context.sni_callback = lambda _socket, server_name, _context: server_names.append(server_name)

    class Image(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = image_png(40, 30, seed=2)
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Image)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, name="tls-host", daemon=True).start()
    yield SimpleNamespace(port=server.server_address[1], cert_file=cert_file, server_names=server_names)
    server.shutdown()
    server.server_close()


def test_tls_checks_the_urls_name_on_the_vetted_connection(tls_host, fake_dns, monkeypatch):
    monkeypatch.setenv("SSL_CERT_FILE", str(tls_host.cert_file))
    fake_dns.answers["images.example"] = ["127.0.0.1"]
    fetch = http_fetcher(allow_private=True)
    tls_host.server_names.clear()
    assert fetch(f"https://images.example:{tls_host.port}/x.png").startswith(b"\x89PNG")
    assert tls_host.server_names == ["images.example"]  # SNI: the name, not the address connected to
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        fetch(f"https://127.0.0.1:{tls_host.port}/x.png")  # the same server, not by its certificate's name


# --- deadlines ----------------------------------------------------------------------------------------


def test_a_host_sending_a_byte_a_second_is_given_up_at_the_deadline(slow):
    deadline = 2.0
    started = time.monotonic()
    fetch = http_fetcher(timeout=deadline, allow_private=True)
    outcome = _outcome_within(deadline + 3, lambda: fetch(slow.url))
    elapsed = time.monotonic() - started
    assert isinstance(outcome.get("error"), httpx.TimeoutException), outcome
    assert deadline <= elapsed < deadline + 1.0


def _captions_unavailable(html: str) -> int:
    return html.count(" · image unavailable")


def test_a_report_over_slow_hosts_finishes_by_its_fetch_deadline(slow, sqlite_warehouse_url, tmp_path):
    """Six images on a host that never finishes sending (each fetch's own deadline is 10 s): the report
    gives them 2 s in all, then draws placeholders."""
    engine = get_engine(sqlite_warehouse_url)
    scans = [Scan(f"slow-{i}", "shop", DAY, "completed", ai=0.9 + i / 100) for i in range(6)]
    insert_report_scans(engine, scans, url_base=slow.url)
    started = time.monotonic()
    outcome = _outcome_within(
        30,
        lambda: build_run_report(engine, DAG_ID, R2, out_dir=tmp_path, top_n=6, fetch_deadline_seconds=2.0),
    )
    elapsed = time.monotonic() - started
    assert "error" not in outcome, outcome
    html = outcome["value"].html_path.read_text()
    assert html.count('class="thumbnail"') == 6 and _captions_unavailable(html) == 6
    assert elapsed < 2.0 + 6  # the fetches' 2 s, and building the rest of the report (not 2 x 10 s)


def test_a_report_over_names_aimed_inside_fetches_nothing(
    internal, fake_dns, sqlite_warehouse_url, tmp_path, monkeypatch
):
    monkeypatch.delenv(ALLOW_PRIVATE_ENV)  # a production worker: nothing configured
    fake_dns.answers |= {
        IDNA_2003: [PUBLIC],
        IDNA_2008: ["127.0.0.1"],
        "rebind.example": [PUBLIC, "127.0.0.1"],
    }
    engine = get_engine(sqlite_warehouse_url)
    port = internal.server.port
    insert_report_scans(
        engine, [Scan("idna", "shop", DAY, "completed", ai=0.97)], url_base=f"http://straße.example:{port}"
    )
    insert_report_scans(
        engine, [Scan("rebind", "shop", DAY, "completed", ai=0.96)], url_base=f"http://rebind.example:{port}"
    )
    report = build_run_report(engine, DAG_ID, R2, out_dir=tmp_path, top_n=2)
    assert internal.requests == []
    html = report.html_path.read_text()
    assert html.count('class="thumbnail"') == 2 and _captions_unavailable(html) == 2


# --- stored results that cannot be drawn --------------------------------------------------------------


def test_a_stored_result_claiming_a_huge_image_is_shown_as_invalid(sqlite_warehouse_url, tmp_path):
    """Stored before the receiver checked shapes: 60000x45000 (100 times Copyleaks' maximum) with one run
    of 2.7 billion pixels. Decoding it would ask for 10 GiB: it is never decoded, nor its image fetched."""
    engine = get_engine(sqlite_warehouse_url)
    insert_report_scans(
        engine,
        [Scan("huge", "shop", DAY, "completed", ai=0.99), Scan("fine", "shop", DAY, "completed", ai=0.5)],
    )
    pixels = 60000 * 45000
    with engine.begin() as conn:
        conn.execute(
            audit_results.update()
            .where(audit_results.c.scan_id == "huge-1-r2")
            .values(width=60000, height=45000, mask_starts=[0], mask_lengths=[pixels], mask_pixels=pixels)
        )
    fetched: list[str] = []

    def fetch(url: str) -> bytes:
        fetched.append(url)
        return image_png(50, 40, seed=3)

    report = build_run_report(engine, DAG_ID, R2, out_dir=tmp_path, top_n=2, fetch_image=fetch)
    assert report.summary["states"]["completed"] == 2
    html = report.html_path.read_text()
    invalid = placeholder((360, 270), report_module.INVALID_RESULT_TEXT)
    assert to_data_uri(invalid) in html  # the huge one's thumbnail
    assert html.count('class="thumbnail"') == 2 and _captions_unavailable(html) == 0
    assert html.count(" · result data invalid") == 1  # the caption says which
    assert [url.split("?")[0] for url in fetched] == ["http://images.invalid/img/fine.png"]


def test_an_image_of_more_pixels_than_copyleaks_scans_is_never_decoded():
    """A decompression bomb (a few hundred KB of PNG that decode to 108 MB) gives a placeholder."""
    import io

    import numpy as np
    from PIL import Image

    from image_audit.reporting.overlays import overlay_thumbnail

    buffer = io.BytesIO()
    Image.new("RGB", (6000, 6000)).save(buffer, format="PNG")  # 36 MP: past Copyleaks' 27 MP
    assert len(buffer.getvalue()) < 1_000_000
    _, drawn = overlay_thumbnail(buffer.getvalue(), np.zeros((600, 600), dtype=bool))
    assert not drawn
    _, drawn = overlay_thumbnail(image_png(600, 600, seed=2), np.zeros((600, 600), dtype=bool))
    assert drawn
