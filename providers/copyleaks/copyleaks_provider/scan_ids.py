"""Scan ids and model names: deterministic, so a retried request never creates a second scan of an image."""

from __future__ import annotations

import hashlib
import re

from copyleaks_provider.exceptions import CopyleaksValidationError

#: Copyleaks' scan id rule: 3 to 36 characters of these.
SCAN_ID_PATTERN = re.compile(r"""^[a-z0-9!@$^&\-+%=_(){}<>';:/.",~|]{3,36}$""")

DEFAULT_MODEL = "ai-image-1-ultra"
#: Alias -> full model name, as Copyleaks reports it in the response's ``model``.
MODEL_ALIASES = {"ai-image-1-ultra": "ai-image-1-ultra-01-09-2025"}
SUPPORTED_MODELS = frozenset(MODEL_ALIASES) | frozenset(MODEL_ALIASES.values())
MAX_ATTEMPT = 99_999


def canonical_model(model: str) -> str:
    """The full name of ``model`` (an alias or a full name); raises for an unknown model."""
    if model not in SUPPORTED_MODELS:
        raise CopyleaksValidationError(
            f"unknown model {model!r}; supported: {', '.join(sorted(SUPPORTED_MODELS))}"
        )
    return MODEL_ALIASES.get(model, model)


def validate_scan_id(scan_id: str) -> str:
    if not isinstance(scan_id, str) or not SCAN_ID_PATTERN.match(scan_id):
        raise CopyleaksValidationError(
            f"invalid scan id {scan_id!r}: 3 to 36 characters of lower-case letters, digits and "
            """!@$^&-+%=_(){}<>';:/.",~|"""
        )
    return scan_id


def _digest(*parts: str) -> str:
    return hashlib.sha256("\x1f".join(parts).encode("utf-8")).hexdigest()


def scan_id_stem(image_id: object, model: str) -> str:
    """What every scan id of ``image_id`` (as ``str`` formats it) with ``model`` (a full name) starts
    with; ``make_scan_id`` adds "-" and the attempt. The one definition of the hash: code that computes
    scan ids in bulk (in SQL) calls this or is tested against it."""
    return "ia" + hashlib.sha256(f"{image_id}\x1f{model}".encode()).hexdigest()[:28]


def make_scan_id(image_id: str, model: str, attempt: int = 1) -> str:
    """The scan id of ``attempt`` at scanning ``image_id`` with ``model`` (alias and full name agree).

    Same inputs, same id: resubmitting after a crash reuses it, so Copyleaks answers 409 instead of
    scanning (and charging) twice. A new attempt, after a scan was lost, gets a new id.
    """
    if not 1 <= attempt <= MAX_ATTEMPT:
        raise CopyleaksValidationError(f"attempt must be 1..{MAX_ATTEMPT}, got {attempt}")
    return f"{scan_id_stem(image_id, canonical_model(model))}-{attempt}"


def make_rejection_id(*row_identity: str) -> str:
    """Deterministic id for a catalog row rejected before submission (recorded, never sent)."""
    return f"rj{_digest(*map(str, row_identity))[:30]}"
