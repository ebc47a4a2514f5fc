"""Unforgeable webhook URLs: each carries an HMAC of its scan id made with the webhook secret.

The receiver checks the token before it parses or stores anything. Several secrets may be valid at once
(the current one first, then the previous ones during a rotation's grace period).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable
from urllib.parse import quote

CALLBACK_PATH = "/callbacks/{scan_id}/{token}"


def webhook_token(secret: str, scan_id: str) -> str:
    if not secret:
        raise ValueError("the webhook secret is empty: set webhook_secret on the Copyleaks connection")
    return hmac.new(secret.encode("utf-8"), scan_id.encode("utf-8"), hashlib.sha256).hexdigest()


def verify_webhook_token(secrets: Iterable[str], scan_id: str, token: str) -> bool:
    """True when ``token`` was made for ``scan_id`` with any of ``secrets`` (constant-time compare)."""
    return any(
        hmac.compare_digest(webhook_token(secret, scan_id), token or "") for secret in secrets if secret
    )


def webhook_url(base_url: str, secret: str, scan_id: str) -> str:
    """The URL Copyleaks POSTs the result of ``scan_id`` to: ``{base_url}/callbacks/{scan_id}/{token}``."""
    path = CALLBACK_PATH.format(scan_id=quote(scan_id, safe=""), token=webhook_token(secret, scan_id))
    return base_url.rstrip("/") + path
