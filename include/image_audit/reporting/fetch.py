"""Fetching catalog images for the report's thumbnails, without letting a catalog row aim the worker
at the network it runs in.

A catalog URL is data from upstream, yet the worker that draws the report fetches it. So the default
fetcher takes http(s) only, refuses a host that resolves to any address that is not public
(private, loopback, link-local such as a cloud metadata service, reserved...), follows at most a few
redirects and checks each hop the same way, and caps the body. Deployments whose images live on
internal hosts (the demo, the tests, the local cluster: everything on loopback) allow private
addresses explicitly with ``IMAGE_AUDIT_REPORT_ALLOW_PRIVATE_URLS=true``.

Left: the check resolves the name, then httpx resolves it again to connect; a DNS server that
answers differently within that instant (rebinding) is not covered.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from collections.abc import Callable
from urllib.parse import urlsplit

import httpx

#: The default fetch refuses bigger bodies (Copyleaks' own limit is 32 MB).
MAX_IMAGE_BYTES = 40 * 1024 * 1024
FETCH_TIMEOUT_SECONDS = 10.0
MAX_REDIRECTS = 3
#: Set to true where the catalog's images are on internal hosts.
ALLOW_PRIVATE_ENV = "IMAGE_AUDIT_REPORT_ALLOW_PRIVATE_URLS"


class UnsafeImageURL(ValueError):
    """The URL is not one the report may fetch (scheme, or an address that is not public)."""


def private_urls_allowed() -> bool:
    return os.environ.get(ALLOW_PRIVATE_ENV, "").strip().lower() in ("1", "true", "yes")


def check_fetchable(url: str, *, allow_private: bool) -> None:
    """Raise ``UnsafeImageURL`` unless ``url`` is http(s) and (unless allowed) resolves to public
    addresses only."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UnsafeImageURL(f"only http(s) URLs with a host are fetched, not {parts.scheme or 'none'!r}")
    if allow_private:
        return
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
        addresses = {
            info[4][0] for info in socket.getaddrinfo(parts.hostname, port, proto=socket.IPPROTO_TCP)
        }
    except (OSError, ValueError) as exc:
        raise UnsafeImageURL(f"the host does not resolve ({type(exc).__name__})") from exc
    for address in addresses:
        if not ipaddress.ip_address(address.split("%", 1)[0]).is_global:
            raise UnsafeImageURL(
                f"the host resolves to a non-public address; set {ALLOW_PRIVATE_ENV}=true if the catalog's "
                "images are on internal hosts"
            )


def http_fetcher(
    timeout: float = FETCH_TIMEOUT_SECONDS,
    max_bytes: int = MAX_IMAGE_BYTES,
    allow_private: bool | None = None,
) -> Callable[[str], bytes]:
    """The report's default ``fetch_image``: a checked HTTP GET (raises on any failure or refusal).

    ``allow_private``: fetch from private and loopback addresses too (default: the environment's
    ``IMAGE_AUDIT_REPORT_ALLOW_PRIVATE_URLS``).
    """
    allow = private_urls_allowed() if allow_private is None else allow_private

    def fetch(url: str) -> bytes:
        with httpx.Client(timeout=timeout, follow_redirects=False) as client:
            for _ in range(MAX_REDIRECTS + 1):
                check_fetchable(url, allow_private=allow)
                with client.stream("GET", url) as response:
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
