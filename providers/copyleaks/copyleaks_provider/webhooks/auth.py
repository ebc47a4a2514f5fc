"""Unforgeable webhook URLs: each carries an HMAC token of its scan id made with the webhook secret.

Several secrets may be valid at once (the current one first, then the previous ones during a rotation).
A submission also sends a second HMAC of the scan id as its ``developerPayload``
(:func:`callback_payload`), which travels only in request bodies and which Copyleaks echoes: a receiver
that requires it accepts a callback only from whoever saw the submission, not whoever saw a leaked URL.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable
from urllib.parse import quote

CALLBACK_PATH = "/callbacks/{scan_id}/{token}"
#: How a callback payload starts (a payload the caller chose instead is anything else).
CALLBACK_PAYLOAD_PREFIX = "ia-callback.v1."


def webhook_token(secret: str, scan_id: str) -> str:
    """The token of ``scan_id``'s callback URL: the HMAC-SHA256 of the scan id with ``secret``."""
    return _hmac(secret, scan_id.encode("utf-8"))


def callback_payload(secret: str, scan_id: str) -> str:
    """The ``developerPayload`` that binds ``scan_id``'s callback to its submission."""
    return CALLBACK_PAYLOAD_PREFIX + _hmac(secret, b"developerPayload\x00" + scan_id.encode("utf-8"))


def verify_callback_payload(secrets: Iterable[str], scan_id: str, payload: str | None) -> bool:
    """True when ``payload`` is :func:`callback_payload` of ``scan_id`` with any of ``secrets``."""
    return any(
        hmac.compare_digest(callback_payload(secret, scan_id), payload or "") for secret in secrets if secret
    )


def _hmac(secret: str, message: bytes) -> str:
    if not secret:
        raise ValueError("the webhook secret is empty: set webhook_secret on the Copyleaks connection")
    return hmac.new(secret.encode("utf-8"), message, hashlib.sha256).hexdigest()


def verify_webhook_token(secrets: Iterable[str], scan_id: str, token: str) -> bool:
    """True when ``token`` was made for ``scan_id`` with any of ``secrets`` (constant-time compare)."""
    return any(
        hmac.compare_digest(webhook_token(secret, scan_id), token or "") for secret in secrets if secret
    )


def webhook_url(base_url: str, secret: str, scan_id: str) -> str:
    """The URL Copyleaks POSTs the result of ``scan_id`` to: ``{base_url}/callbacks/{scan_id}/{token}``."""
    path = CALLBACK_PATH.format(scan_id=quote(scan_id, safe=""), token=webhook_token(secret, scan_id))
    return base_url.rstrip("/") + path
