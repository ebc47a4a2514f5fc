"""The Copyleaks connection, read once into typed settings.

Connection fields: ``login`` = account email, ``password`` = API key; everything else is in ``extra``
(``get_provider_info.py`` describes the UI form). Secrets are ``SecretStr`` so a stray repr or log line
shows ``**********``.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

DEFAULT_IDENTITY_URL = "https://id.copyleaks.com"
DEFAULT_API_URL = "https://api.copyleaks.com"
DEFAULT_CONN_ID = "copyleaks_default"
#: Pace at 95.5% of the account's budget: ten requests then span 1.047 s, and the 47 ms of slack absorb
#: a request's lateness and the jitter between sending it and Copyleaks counting it (``pacing.Pacer``).
RATE_HEADROOM = 0.955


class CopyleaksSettings(BaseModel):
    model_config = ConfigDict(frozen=True)

    email: str
    api_key: SecretStr
    identity_url: str = DEFAULT_IDENTITY_URL
    api_url: str = DEFAULT_API_URL
    sandbox: bool = False
    #: Public base URL of our webhook receiver; callbacks go to ``{base}/callbacks/{scan_id}/{token}``.
    webhook_base_url: str | None = None
    webhook_secret: SecretStr | None = None
    #: Secrets still accepted on arrival during a rotation's grace period.
    previous_webhook_secrets: tuple[SecretStr, ...] = ()
    #: Refuse (403) a callback whose body does not echo the submission's ``developerPayload``
    #: (:func:`~copyleaks_provider.webhooks.auth.callback_payload`): then a leaked callback URL alone cannot
    #: post a result. Off by default: Copyleaks documents the echo for its error webhooks, not for image
    #: results.
    require_callback_payload: bool = False
    max_concurrency: int = Field(default=16, ge=1, le=1000)
    #: The account's request budget (Copyleaks documents 10/s), shared by every task and worker of the
    #: deployment through the account state; 0 means no limit (an enterprise contract without one).
    requests_per_second: float = Field(default=10.0, ge=0)
    #: The account's sync-check budget per 15 minutes (Copyleaks documents 900); 0 means no limit.
    checks_per_15_minutes: int = Field(default=900, ge=0)
    #: The Airflow connection (postgres or sqlite) where the deployment shares the access token and the
    #: request budget; unset: a SQLite file in the Airflow home (enough for one machine).
    account_state_conn_id: str | None = None
    #: How long a task waits out a login block (429) before it fails and says so: by default a whole
    #: block of Copyleaks' documented 5 minutes, so a night's submit tasks do not burn their Airflow
    #: retries inside one block.
    max_login_wait_seconds: float = Field(default=330.0, ge=0)
    timeout_seconds: float = Field(default=30.0, gt=0)

    @field_validator("identity_url", "api_url", "webhook_base_url")
    @classmethod
    def _strip_slash(cls, value: str | None) -> str | None:
        return value.rstrip("/") if value else value

    @field_validator("previous_webhook_secrets", mode="before")
    @classmethod
    def _split_secrets(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = json.loads(value) if value.strip().startswith("[") else value.split(",")
        return tuple(s.strip() for s in value if s and s.strip()) if value else ()

    @property
    def webhook_secrets(self) -> list[str]:
        """Every secret a callback token may be made with, the current one first."""
        secrets = [self.webhook_secret, *self.previous_webhook_secrets] if self.webhook_secret else []
        return [s.get_secret_value() for s in secrets]

    @classmethod
    def from_connection(cls, conn: Any) -> CopyleaksSettings:
        """Build from an Airflow ``Connection`` (``login``, ``password``, ``extra_dejson``)."""
        extra = dict(conn.extra_dejson or {})
        for key in list(extra):  # the UI may store form fields as extra__copyleaks__<name>
            if key.startswith("extra__copyleaks__"):
                extra.setdefault(key.removeprefix("extra__copyleaks__"), extra.pop(key))
        known = {k: v for k, v in extra.items() if k in cls.model_fields and v not in (None, "")}
        return cls(email=conn.login or "", api_key=conn.password or "", **known)
