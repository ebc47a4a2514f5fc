"""Emulator settings: accounts, credits, the worker pool and the fault knobs (changeable at runtime)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field

#: The knobs ``PATCH /admin/faults`` may change while the emulator runs.
FAULT_KNOBS = (
    "api_latency_ms",
    "webhook_latency_ms",
    "p_429",
    "retry_after_seconds",
    "p_5xx",
    "p_drop_webhook",
    "p_duplicate_webhook",
    "p_delay_webhook",
    "delay_webhook_ms",
    "reorder",
    "webhook_max_tries",
    "webhook_retry_base_seconds",
)
#: Deprecated spellings still accepted (in settings, flags and ``PATCH /admin/faults``).
KNOB_ALIASES = {"reorder_webhooks": "reorder"}


class EmulatorSettings(BaseModel):
    """Everything the emulator can be told; the fault knobs may also change at runtime."""

    model_config = ConfigDict(validate_assignment=True, populate_by_name=True, extra="forbid")

    accounts: dict[str, str] = Field(
        default_factory=lambda: {"demo@image-audit.dev": "demo-api-key"},
        description="email -> API key of the accounts that may log in",
    )
    token_ttl_seconds: float = Field(default=48 * 3600, gt=0, description="lifetime of an access token")
    # Copyleaks' documented per-account limits (0: no limit). Benchmarks and enterprise-like tests
    # raise them; nothing else should.
    api_requests_per_second: int = Field(
        default=10, ge=0, description="API requests per second per account (the async submit included)"
    )
    logins_per_window: int = Field(default=12, ge=0, description="logins per account per login window")
    login_window_seconds: float = Field(default=900, gt=0, description="the login window (15 minutes)")
    login_block_seconds: float = Field(
        default=300, ge=0, description="how long logins are refused after the login limit is crossed"
    )
    checks_per_window: int = Field(default=900, ge=0, description="sync checks per account per check window")
    check_window_seconds: float = Field(default=900, gt=0, description="the sync-check window (15 minutes)")
    repeat_submission_status: Literal[201, 409] = Field(
        default=201,
        description="the answer to a scan id submitted again for the same image: Copyleaks does not "
        "document it, so a client must take either (201: idempotent, 409: already used)",
    )
    credits: int = Field(
        default=1_000_000, ge=0, description="credit balance (1 credit per non-sandbox scan)"
    )
    workers: int = Field(default=32, ge=1, description="concurrent fetch/decode/deliver workers")
    api_latency_ms: float = Field(default=0, ge=0, description="delay before answering each API call")
    webhook_latency_ms: float = Field(default=0, ge=0, description="delay before each webhook delivery")
    p_429: float = Field(default=0, ge=0, le=1, description="probability of a 429 on submit/check")
    retry_after_seconds: float = Field(default=1, ge=0, description="Retry-After of an injected 429")
    p_5xx: float = Field(default=0, ge=0, le=1, description="probability of a 503 on submit/check")
    p_drop_webhook: float = Field(default=0, ge=0, le=1, description="probability a result is never sent")
    p_duplicate_webhook: float = Field(
        default=0, ge=0, le=1, description="probability a result is delivered twice"
    )
    p_delay_webhook: float = Field(
        default=0, ge=0, le=1, description="probability a delivery is held back by delay_webhook_ms"
    )
    delay_webhook_ms: float = Field(default=2000, ge=0, description="how long a delayed delivery waits")
    reorder: bool = Field(
        default=False,
        validation_alias=AliasChoices("reorder", "reorder_webhooks"),
        description="out-of-order delivery: each webhook waits a random extra 0..latency+100 ms",
    )
    webhook_max_tries: int = Field(default=5, ge=1, description="tries per webhook before it is given up")
    webhook_retry_base_seconds: float = Field(
        default=4.0, ge=0, description="retry n waits base * 2**(n-1): 4 s gives 4+8+16+32 s, about a minute"
    )
    seed: int = Field(default=0, description="seed of the fault dice, so a faulty run can be replayed")

    def faults(self) -> dict[str, Any]:
        """The current value of every fault knob."""
        return {knob: getattr(self, knob) for knob in FAULT_KNOBS}

    def change_faults(self, changes: dict[str, Any]) -> None:
        """Change fault knobs at runtime, all or nothing (``ValueError``: unknown knob or bad value)."""
        self.update(changes, allowed=FAULT_KNOBS)

    def update(self, changes: dict[str, Any], allowed: tuple[str, ...] | None = None) -> None:
        """Apply ``changes`` all or nothing; ``ValueError`` names an unknown field or a bad value."""
        changes = {KNOB_ALIASES.get(name, name): value for name, value in changes.items()}
        known = allowed if allowed is not None else tuple(type(self).model_fields)
        unknown = sorted(set(changes) - set(known))
        if unknown:
            raise ValueError(f"unknown settings {unknown}; known: {', '.join(known)}")
        merged = self.model_validate({**self.model_dump(), **changes})  # validates every value first
        for name in changes:
            setattr(self, name, getattr(merged, name))

    @property
    def reorder_webhooks(self) -> bool:
        """Deprecated alias of :attr:`reorder`."""
        return self.reorder
