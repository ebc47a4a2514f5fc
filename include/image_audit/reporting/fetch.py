"""Fetching catalog images for the report's thumbnails, without letting a catalog row aim the worker
at the network it runs in, or hold it there.

A catalog URL is data from upstream, yet the worker that draws the report fetches it. So the default
fetcher (:func:`http_fetcher`):

- takes http(s) only, and follows at most a few redirects, each hop checked the same way;
- connects only to addresses it has vetted: each connection (every redirect hop's too) resolves its
  host once, spelled as httpx sends it (IDNA 2008), refuses the host when any of its addresses is not
  public (private, loopback, link-local such as a cloud metadata service, reserved...), and connects to
  those very addresses. The Host header, TLS SNI and the certificate check still use the host name.
  No environment proxy is used: it would connect to addresses nobody vetted;
- gives each image a total deadline that bounds the name lookup, every connect, TLS handshake, write
  and read (a host sending a byte now and then cannot hold it), and caps the body.

Deployments whose images live on internal hosts (the demo, the tests, the local cluster: everything on
loopback) allow private addresses explicitly with ``IMAGE_AUDIT_REPORT_ALLOW_PRIVATE_URLS=true``.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import queue
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterable, Iterator

import httpcore
import httpx

#: The default fetch refuses bigger bodies (Copyleaks' own limit is 32 MB).
MAX_IMAGE_BYTES = 40 * 1024 * 1024
#: The time one image's fetch may take in all (its redirects, lookups, connections and reads).
FETCH_TIMEOUT_SECONDS = 10.0
MAX_REDIRECTS = 3
#: Set to true where the catalog's images are on internal hosts.
ALLOW_PRIVATE_ENV = "IMAGE_AUDIT_REPORT_ALLOW_PRIVATE_URLS"


class UnsafeImageURL(ValueError):
    """The URL is not one the report may fetch (scheme, or an address that is not public)."""


def private_urls_allowed() -> bool:
    return os.environ.get(ALLOW_PRIVATE_ENV, "").strip().lower() in ("1", "true", "yes")


def _http_url(url: str | httpx.URL) -> httpx.URL:
    """``url`` as httpx will request it; ``UnsafeImageURL`` unless it is http(s) with a host."""
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError) as exc:
        raise UnsafeImageURL(f"not a URL ({exc})") from exc
    if parsed.scheme not in ("http", "https") or not parsed.raw_host:
        raise UnsafeImageURL(f"only http(s) URLs with a host are fetched, not {parsed.scheme or 'none'!r}")
    return parsed


def _lookup(host: str, port: int, timeout: float | None) -> list[tuple]:
    """``getaddrinfo`` for a TCP connection, given at most ``timeout`` seconds: a resolver can retry for
    far longer; a lookup still running then is left to its daemon thread."""
    if timeout is None:
        return socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    answer: queue.SimpleQueue = queue.SimpleQueue()

    def lookup() -> None:
        try:
            answer.put(socket.getaddrinfo(host, port, type=socket.SOCK_STREAM))
        except Exception as exc:  # handed to the caller
            answer.put(exc)

    threading.Thread(target=lookup, name="report-fetch-lookup", daemon=True).start()
    try:
        result = answer.get(timeout=timeout)
    except queue.Empty:
        raise httpcore.ConnectTimeout(f"looking up {host} took longer than the fetch's deadline") from None
    if isinstance(result, Exception):
        raise result
    return result


def vetted_addresses(host: str, port: int, *, allow_private: bool, timeout: float | None = None) -> list[str]:
    """The addresses ``host`` (ASCII, as sent) resolves to, looked up once: the only ones a fetch may
    connect to. ``UnsafeImageURL`` when it does not resolve, or when any address is not public unless
    ``allow_private`` (one private answer is enough: the connection could be made to it)."""
    try:
        infos = _lookup(host, port, timeout)
    except (OSError, UnicodeError) as exc:
        raise UnsafeImageURL(f"the host does not resolve ({type(exc).__name__})") from exc
    addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
    if not addresses:
        raise UnsafeImageURL("the host does not resolve (no address)")
    if not allow_private:
        for address in addresses:
            if not ipaddress.ip_address(address.split("%", 1)[0]).is_global:
                raise UnsafeImageURL(
                    f"the host resolves to a non-public address; set {ALLOW_PRIVATE_ENV}=true if the "
                    "catalog's images are on internal hosts"
                )
    return addresses


def check_fetchable(url: str, *, allow_private: bool) -> None:
    """Raise ``UnsafeImageURL`` unless ``url`` is http(s) and (unless allowed) resolves to public
    addresses only. A check only: :func:`http_fetcher` vets the addresses it connects to itself."""
    parsed = _http_url(url)
    if not allow_private:
        port = parsed.port or (443 if parsed.scheme == "https" else 80)
        vetted_addresses(parsed.raw_host.decode("ascii"), port, allow_private=False)


class _Deadline:
    """The instant one fetch must be over by."""

    def __init__(self, seconds: float) -> None:
        self.at = time.monotonic() + seconds

    def clamp(self, timeout: float | None, expired: type[Exception]) -> float:
        """``timeout`` cut to the time left; ``expired`` raised once none is left."""
        left = self.at - time.monotonic()
        if left <= 0:
            raise expired("the image's fetch deadline has passed")
        return left if timeout is None else min(timeout, left)


class _DeadlineStream(httpcore.NetworkStream):
    """A connection whose every read, write and TLS handshake ends by the fetch's deadline (Python's
    TLS operations take the socket timeout as their total time, not per underlying read)."""

    def __init__(self, stream: httpcore.NetworkStream, deadline: _Deadline) -> None:
        self._stream = stream
        self._deadline = deadline

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._stream.read(max_bytes, self._deadline.clamp(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._stream.write(buffer, self._deadline.clamp(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self._stream.close()

    def start_tls(
        self, ssl_context: ssl.SSLContext, server_hostname: str | None = None, timeout: float | None = None
    ) -> httpcore.NetworkStream:
        # httpcore passes the URL's host as server_hostname: SNI and the certificate check use the name
        timeout = self._deadline.clamp(timeout, httpcore.ConnectTimeout)
        return _DeadlineStream(self._stream.start_tls(ssl_context, server_hostname, timeout), self._deadline)

    def get_extra_info(self, info: str):
        return self._stream.get_extra_info(info)


class _VettingBackend(httpcore.NetworkBackend):
    """httpcore's TCP connections, each made only to an address vetted by the one lookup of its host,
    within the fetch's deadline."""

    def __init__(self, *, allow_private: bool, deadline: _Deadline) -> None:
        self._allow_private = allow_private
        self._deadline = deadline
        self._tcp = httpcore.SyncBackend()

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable | None = None,
    ) -> httpcore.NetworkStream:
        addresses = vetted_addresses(
            host,
            port,
            allow_private=self._allow_private,
            timeout=self._deadline.clamp(timeout, httpcore.ConnectTimeout),
        )
        failure: Exception | None = None
        for address in addresses:  # an IP literal: connecting looks nothing up again
            try:
                budget = self._deadline.clamp(timeout, httpcore.ConnectTimeout)
                stream = self._tcp.connect_tcp(address, port, budget, local_address, socket_options)
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                failure = exc
                continue
            return _DeadlineStream(stream, self._deadline)
        assert failure is not None
        raise failure

    def connect_unix_socket(self, path: str, timeout: float | None = None, socket_options=None):
        raise UnsafeImageURL("images are fetched over TCP only")

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)


#: httpcore's errors and the httpx errors they become, most specific first (as httpx's own transport).
_HTTPX_ERRORS = [
    (getattr(httpcore, name), getattr(httpx, name))
    for name in (
        "ConnectTimeout",
        "ReadTimeout",
        "WriteTimeout",
        "PoolTimeout",
        "TimeoutException",
        "ConnectError",
        "ReadError",
        "WriteError",
        "NetworkError",
        "ProxyError",
        "UnsupportedProtocol",
        "LocalProtocolError",
        "RemoteProtocolError",
        "ProtocolError",
    )
]


@contextlib.contextmanager
def _httpx_errors() -> Iterator[None]:
    try:
        yield
    except Exception as exc:
        for core_error, httpx_error in _HTTPX_ERRORS:
            if isinstance(exc, core_error):
                raise httpx_error(str(exc)) from exc
        raise


class _ResponseStream(httpx.SyncByteStream):
    def __init__(self, stream: Iterable[bytes]) -> None:
        self._stream = stream

    def __iter__(self) -> Iterator[bytes]:
        with _httpx_errors():
            yield from self._stream

    def close(self) -> None:
        if hasattr(self._stream, "close"):
            self._stream.close()


class _VettedTransport(httpx.BaseTransport):
    """httpx's default transport (its request and response mapping, copied) over a connection pool
    whose network backend is ``backend``: ``httpx.HTTPTransport`` takes none."""

    def __init__(self, backend: httpcore.NetworkBackend, ssl_context: ssl.SSLContext) -> None:
        self._pool = httpcore.ConnectionPool(ssl_context=ssl_context, network_backend=backend)

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        assert isinstance(request.stream, httpx.SyncByteStream)
        core_request = httpcore.Request(
            method=request.method,
            url=httpcore.URL(
                scheme=request.url.raw_scheme,
                host=request.url.raw_host,
                port=request.url.port,
                target=request.url.raw_path,
            ),
            headers=request.headers.raw,
            content=request.stream,
            extensions=request.extensions,
        )
        with _httpx_errors():
            response = self._pool.handle_request(core_request)
        assert isinstance(response.stream, Iterable)
        return httpx.Response(
            status_code=response.status,
            headers=response.headers,
            stream=_ResponseStream(response.stream),
            extensions=response.extensions,
        )

    def close(self) -> None:
        self._pool.close()


def http_fetcher(
    timeout: float = FETCH_TIMEOUT_SECONDS,
    max_bytes: int = MAX_IMAGE_BYTES,
    allow_private: bool | None = None,
) -> Callable[[str], bytes]:
    """The report's default ``fetch_image``: a vetted HTTP GET (raises on any failure or refusal).

    ``timeout``: the seconds one fetch may take in all, redirects included. ``allow_private``: fetch
    from private and loopback addresses too (default: the environment's
    ``IMAGE_AUDIT_REPORT_ALLOW_PRIVATE_URLS``). Certificates are checked against certifi's CAs, or
    ``SSL_CERT_FILE``/``SSL_CERT_DIR`` when set.
    """
    allow = private_urls_allowed() if allow_private is None else allow_private

    def fetch(url: str) -> bytes:
        backend = _VettingBackend(allow_private=allow, deadline=_Deadline(timeout))
        # a context of its own: httpcore sets each connection's ALPN on it, and fetches run in threads
        transport = _VettedTransport(backend, httpx.create_ssl_context())
        with httpx.Client(
            transport=transport, timeout=timeout, follow_redirects=False, trust_env=False
        ) as client:
            for _ in range(MAX_REDIRECTS + 1):
                with client.stream("GET", _http_url(url)) as response:
                    if response.is_redirect:
                        url = str(response.url.join(response.headers["location"]))
                        continue
                    response.raise_for_status()
                    chunks, size = [], 0
                    for chunk in response.iter_bytes():
                        size += len(chunk)
                        if size > max_bytes:
                            raise ValueError(f"image larger than {max_bytes} bytes")
                        chunks.append(chunk)
                    return b"".join(chunks)
        raise UnsafeImageURL(f"more than {MAX_REDIRECTS} redirects")

    return fetch
