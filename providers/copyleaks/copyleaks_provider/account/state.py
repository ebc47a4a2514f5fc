"""What the whole deployment shares about one Copyleaks account: its access token and its request budget.

Copyleaks limits the account, not the process, so both live in a database every component reaches (the
connection named by ``account_state_conn_id``, PostgreSQL for a cluster; unset, a SQLite file in the
Airflow home). One process logs in at a time, under the account's row lock, and the others take its
token; the token is stored encrypted with a key derived from the API key; a login block is recorded for
every process; send slots are reserved atomically, so every caller of the deployment is spaced as one.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.fernet import Fernet, InvalidToken
from sqlalchemy import (
    Column,
    Engine,
    Float,
    MetaData,
    String,
    Table,
    Text,
    bindparam,
    create_engine,
    event,
    func,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError, ProgrammingError, SQLAlchemyError

from copyleaks_provider.connections import sqlalchemy_url
from copyleaks_provider.exceptions import CopyleaksAccountStateError, CopyleaksValidationError
from copyleaks_provider.retries import outage_retrying
from copyleaks_provider.settings import CopyleaksSettings

log = logging.getLogger(__name__)

#: A login waits at most this long for another process's login to finish (SQLite's busy timeout,
#: PostgreSQL's lock timeout).
LOCK_WAIT_SECONDS = 120
CONNECT_TIMEOUT_SECONDS = 10
#: How long opening the account state rides out its database being unreachable (see account_state).
OPEN_RETRY_SECONDS = 30.0

metadata = MetaData()

account_tokens = Table(
    "copyleaks_account_tokens",
    metadata,
    Column("account", String(64), primary_key=True),  # a hash of the identity URL and the email
    Column("token", Text),  # Fernet-encrypted access token
    Column("renew_at", Float),  # epoch seconds: use the token until then
    Column("logins_blocked_until", Float),  # epoch seconds: Copyleaks refuses logins until then
)

account_budget = Table(
    "copyleaks_account_budget",
    metadata,
    Column("account", String(64), primary_key=True),
    Column("kind", String(16), primary_key=True),  # "api" or "check"
    Column("next_slot", Float, nullable=False),  # epoch seconds: the first send time not yet taken
)


@dataclass(frozen=True)
class Token:
    value: str
    renew_at: float  # epoch seconds


class LoginBlocked(Exception):
    """Copyleaks refuses this account's logins for ``seconds`` more (recorded by this or another process)."""

    def __init__(self, seconds: float):
        super().__init__(f"logins blocked for {seconds:.0f} s")
        self.seconds = seconds


class AccountState:
    """The shared token and budget of one account, in one database (see the module docstring)."""

    def __init__(self, engine: Engine, settings: CopyleaksSettings):
        self.engine = engine
        self.where = _where(settings)
        self.account = hashlib.sha256(f"{settings.identity_url}\n{settings.email}".encode()).hexdigest()
        key = hashlib.sha256(b"copyleaks-token-store\n" + settings.api_key.get_secret_value().encode())
        self._fernet = Fernet(base64.urlsafe_b64encode(key.digest()))
        self._postgres = engine.dialect.name == "postgresql"

    # --- token --------------------------------------------------------------------------------------
    def token(self) -> Token | None:
        """The shared token while it is good to use, else None."""
        with _unreachable_is_transient(self.where), self.engine.connect() as conn:
            row = conn.execute(select(account_tokens).where(account_tokens.c.account == self.account)).first()
        return self._usable(row)

    def login(self, stale: str | None, log_in: Callable[[], Token]) -> Token:
        """The shared token, calling ``log_in`` (under the account's lock) only when there is none.

        ``stale``: a token Copyleaks just refused (401): it does not count as shared, so the first
        process to get here logs in again and the others take its new token. ``log_in`` raises
        ``LoginBlocked`` for a 429, which is recorded for every process before it propagates.
        """
        blocked: LoginBlocked | None = None
        with _unreachable_is_transient(self.where), self.engine.begin() as conn:
            if self._postgres:  # a login hung elsewhere must not hold every other process for ever
                conn.exec_driver_sql(f"SET LOCAL lock_timeout = '{LOCK_WAIT_SECONDS}s'")
            self._ensure_row(conn)
            row = conn.execute(
                select(account_tokens).where(account_tokens.c.account == self.account).with_for_update()
            ).first()
            token = self._usable(row)
            if token is not None and token.value != stale:
                return token
            until = row.logins_blocked_until or 0.0
            if until > time.time():
                raise LoginBlocked(until - time.time())
            try:
                token = log_in()
            except LoginBlocked as exc:
                blocked = exc
                values: dict[str, Any] = {"logins_blocked_until": time.time() + exc.seconds}
            else:
                values = {
                    "token": self._fernet.encrypt(token.value.encode()).decode(),
                    "renew_at": token.renew_at,
                    "logins_blocked_until": None,
                }
            conn.execute(
                update(account_tokens).where(account_tokens.c.account == self.account).values(values)
            )
        if blocked is not None:
            raise blocked
        return token

    def forget(self) -> None:
        """Drop the shared token (the next call logs in): the connection's "Test" button."""
        with _unreachable_is_transient(self.where), self.engine.begin() as conn:
            conn.execute(
                update(account_tokens)
                .where(account_tokens.c.account == self.account)
                .values(token=None, renew_at=None)
            )

    def _usable(self, row) -> Token | None:
        if row is None or not row.token or (row.renew_at or 0) <= time.time():
            return None
        try:
            value = self._fernet.decrypt(row.token.encode()).decode()
        except InvalidToken:  # written with another API key: as good as no token
            return None
        return Token(value, row.renew_at)

    def _ensure_row(self, conn) -> None:
        dialect = postgresql if self._postgres else sqlite
        conn.execute(dialect.insert(account_tokens).values(account=self.account).on_conflict_do_nothing())

    # --- budget -------------------------------------------------------------------------------------
    def reserve(self, kind: str, count: int, interval: float, earliest: float) -> float:
        """Take the account's next ``count`` send slots of ``kind``, ``interval`` s apart, none before
        ``earliest``; returns the first one as epoch seconds (``earliest``, or later when the budget is
        taken until then).

        Slots are absolute times: a caller sleeps until its slot by its own clock, so the round trip
        to the database does not shift it (hosts keep their clocks in sync, as Airflow requires).
        """
        span = count * interval
        later = func.greatest if self._postgres else func.max
        statement = (
            update(account_budget)
            .where(account_budget.c.account == self.account, account_budget.c.kind == kind)
            .values(next_slot=later(account_budget.c.next_slot, bindparam("earliest", type_=Float)) + span)
            .returning(account_budget.c.next_slot)
        )
        for _ in range(2):
            with _unreachable_is_transient(self.where), self.engine.begin() as conn:
                next_slot = conn.execute(statement, {"earliest": earliest}).scalar()
                if next_slot is not None:
                    return next_slot - span
                dialect = postgresql if self._postgres else sqlite
                conn.execute(
                    dialect.insert(account_budget)
                    .values(account=self.account, kind=kind, next_slot=0.0)
                    .on_conflict_do_nothing()
                )
        raise RuntimeError("the account budget row could not be created")  # pragma: no cover


# --- where the state lives --------------------------------------------------------------------------
_ENGINES: dict[str, Engine] = {}
_ENGINES_LOCK = threading.Lock()


def account_state(settings: CopyleaksSettings) -> AccountState:
    """The account state of ``settings``' account, in the database its connection names.

    Opening it (the first time in a process: its tables are checked) rides out an outage of that
    database for up to ``OPEN_RETRY_SECONDS``, as each request's use of it does (the request's
    retries): a task that starts during a few seconds' outage does not fail its try for it.
    """
    where = _where(settings)

    def open_engine() -> Engine:
        with _unreachable_is_transient(where):
            return _engine(state_database_url(settings))

    retrying = outage_retrying(CopyleaksAccountStateError, OPEN_RETRY_SECONDS, log)
    return AccountState(retrying(open_engine), settings)


def _where(settings: CopyleaksSettings) -> str:
    return settings.account_state_conn_id or "the default SQLite file in the Airflow home"


@contextlib.contextmanager
def _unreachable_is_transient(where: str):
    """A database error becomes ``CopyleaksAccountStateError``: retried, and saying where."""
    try:
        yield
    except SQLAlchemyError as exc:
        raise CopyleaksAccountStateError(
            f"the Copyleaks account state ({where}) did not answer: {type(exc).__name__}"
        ) from exc


def state_database_url(settings: CopyleaksSettings) -> str:
    """The SQLAlchemy URL of the account state: ``account_state_conn_id``'s database, or the default
    SQLite file in the Airflow home."""
    if not settings.account_state_conn_id:
        _warn_if_distributed()
        home = Path(os.environ.get("AIRFLOW_HOME") or Path.home() / "airflow")
        home.mkdir(parents=True, exist_ok=True)
        return f"sqlite:///{home / 'copyleaks_account_state.db'}"
    from airflow.sdk import BaseHook

    conn = BaseHook.get_connection(settings.account_state_conn_id)
    url = sqlalchemy_url(conn)
    if url is None:
        raise CopyleaksValidationError(
            f"the account state connection {settings.account_state_conn_id!r} is of type "
            f"{conn.conn_type!r}: use postgres (shared by every host) or sqlite (one machine)"
        )
    parsed = make_url(url)
    if parsed.drivername == "postgresql":  # SQLAlchemy 2.1's default driver is psycopg 3: we ship psycopg2
        url = parsed.set(drivername="postgresql+psycopg2").render_as_string(hide_password=False)
    return url


def _warn_if_distributed() -> None:
    """The default SQLite file is one host's: with workers on several hosts, each keeps its own token
    and budget, and together they log in and send several times what the account allows."""
    try:
        from airflow.configuration import conf

        executor = conf.get("core", "executor", fallback="") or ""
    except Exception:  # outside Airflow: nothing to say
        return
    if any(name in executor for name in ("Celery", "Kubernetes", "Edge")):
        log.warning(
            "The Copyleaks connection has no account_state_conn_id, so this host keeps the account's "
            "token and request budget in a local SQLite file; with %s workers on several hosts each "
            "host logs in and sends on its own. Name a PostgreSQL connection every host reaches.",
            executor,
        )


def _engine(url: str) -> Engine:
    with _ENGINES_LOCK:
        if url not in _ENGINES:
            options: dict[str, Any] = {}
            if url.startswith("postgresql"):
                options["connect_args"] = {"connect_timeout": CONNECT_TIMEOUT_SECONDS}
            engine = create_engine(url, pool_pre_ping=True, pool_size=2, max_overflow=4, **options)
            if engine.dialect.name == "sqlite":
                event.listen(engine, "connect", _sqlite_connect)
                event.listen(engine, "begin", lambda conn: conn.exec_driver_sql("BEGIN IMMEDIATE"))
            try:
                metadata.create_all(engine)
            except (ProgrammingError, IntegrityError):  # another process created them at the same time
                metadata.create_all(engine)
            _ENGINES[url] = engine
        return _ENGINES[url]


def _sqlite_connect(dbapi_connection, _record) -> None:
    dbapi_connection.isolation_level = None  # SQLAlchemy, not the driver, opens transactions
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute(f"PRAGMA busy_timeout={LOCK_WAIT_SECONDS * 1000}")
    cursor.close()
