"""The dashboard's two database logins: a read-only one for every page, and one that may only
INSERT into ``feedback`` (dashboard/feedback.py). Neither can change a frame, defect or alarm.

- ``steel_dashboard``: LOGIN, member of workers.db_migrate's ``steel_reader`` group (SELECT only);
  its sessions are also read-only and time out after READ_STATEMENT_TIMEOUT_MS, so one heavy
  history query cannot hold the database. Both are set on the role itself (ALTER ROLE ... SET),
  so every client of the login gets them, Grafana's datasource included, and again by
  ``open_reader`` on each connection (which also covers a login a DBA created without them).
- ``steel_feedback``: LOGIN, INSERT on ``feedback`` and nothing else (no SELECT, no UPDATE).

URLs: STEEL_DASHBOARD_DB_URL / STEEL_DASHBOARD_FEEDBACK_DB_URL when set (production: with their
passwords); otherwise the defect database's URL with the user swapped for these roles, which
works on the embedded stack (local trust authentication). ``ensure_dashboard_roles`` creates the
roles; `steel dashboard` runs it on the embedded database, a DBA runs it elsewhere:

    python -m dashboard.db_access roles        # as STEEL_POSTGRES_URL, the tables' owner
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from pydantic import SecretStr
from sqlalchemy import Engine, event, text
from sqlalchemy.engine import make_url

from dashboard.config import DashboardSettings
from steelcore.settings import reveal
from workers import db_migrate

DASHBOARD_ROLE = "steel_dashboard"
FEEDBACK_ROLE = "steel_feedback"
READ_STATEMENT_TIMEOUT_MS = 15_000
# Streamlit runs each browser session in its own thread; a few connections serve many viewers.
READER_POOL_SIZE = 4
READER_MAX_OVERFLOW = 4


def role_url(url: str, role: str, password: str | None = None) -> str:
    """``url`` with its user replaced by ``role`` (and its password by ``password``)."""
    # URL.set() skips None, which would keep the admin's password: replace both fields outright.
    parsed = make_url(db_migrate.sqlalchemy_url(url))._replace(username=role, password=password)
    return parsed.render_as_string(hide_password=False)


def reader_url(settings: DashboardSettings) -> str:
    """URL of the read-only login. Raises ServiceUnavailableError when no database is known."""
    if configured := reveal(settings.dashboard_db_url):
        return configured
    from steelcore.service_urls import postgres_url

    return role_url(postgres_url(settings), DASHBOARD_ROLE)


def feedback_url(settings: DashboardSettings) -> str:
    """URL of the feedback writer login."""
    if configured := reveal(settings.dashboard_feedback_db_url):
        return configured
    from steelcore.service_urls import postgres_url

    return role_url(postgres_url(settings), FEEDBACK_ROLE)


def open_reader(url: str) -> Engine:
    """An engine whose sessions are read-only and time out (see module docstring)."""
    engine = db_migrate.create_db_engine(url, pool_size=READER_POOL_SIZE, max_overflow=READER_MAX_OVERFLOW)

    @event.listens_for(engine, "connect")
    def _read_only(dbapi_connection: Any, _record: Any) -> None:
        with dbapi_connection.cursor() as cursor:
            cursor.execute(f"SET statement_timeout = {READ_STATEMENT_TIMEOUT_MS}")
            cursor.execute("SET default_transaction_read_only = on")
        dbapi_connection.commit()

    return engine


def open_feedback_writer(url: str) -> Engine:
    return db_migrate.create_db_engine(url, pool_size=1, max_overflow=2)


def ensure_dashboard_roles(
    admin_url: str,
    *,
    dashboard_password: SecretStr | None = None,
    feedback_password: SecretStr | None = None,
) -> None:
    """Create (if missing) and grant the two login roles on the database at ``admin_url``.

    Run as the tables' owner after workers.db_migrate.upgrade; idempotent. A password given here
    is set on the role (None leaves it as it is: fine with local trust authentication).
    """
    db_migrate.ensure_roles(admin_url)
    statements = [
        _create_login_role_sql(DASHBOARD_ROLE),
        _create_login_role_sql(FEEDBACK_ROLE),
        f"GRANT {db_migrate.READER_ROLE} TO {DASHBOARD_ROLE}",
        # Grafana reads as this login without open_reader's session settings: put them on the role.
        f"ALTER ROLE {DASHBOARD_ROLE} SET statement_timeout = {READ_STATEMENT_TIMEOUT_MS}",
        f"ALTER ROLE {DASHBOARD_ROLE} SET default_transaction_read_only = on",
        f"GRANT USAGE ON SCHEMA public TO {FEEDBACK_ROLE}",
        f"GRANT INSERT ON feedback TO {FEEDBACK_ROLE}",
    ]
    engine = db_migrate.create_db_engine(admin_url)
    try:
        with engine.begin() as conn:
            for statement in statements:  # role names are this module's constants, never input
                conn.execute(text(statement))
            for role, password in ((DASHBOARD_ROLE, dashboard_password), (FEEDBACK_ROLE, feedback_password)):
                if password is not None:
                    db_migrate.set_role_password(conn, role, password)
    finally:
        engine.dispose()


def _create_login_role_sql(role: str) -> str:
    return (
        "DO $$ BEGIN "
        f"IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{role}') THEN CREATE ROLE {role} LOGIN; "
        "END IF; EXCEPTION WHEN duplicate_object THEN NULL; END $$"
    )


def prepare_embedded_database(settings: DashboardSettings) -> None:
    """For `steel dashboard` on the embedded stack: bring the schema to head and create the roles,
    as the embedded superuser. Skipped when both dashboard URLs are configured."""
    if settings.dashboard_db_url and settings.dashboard_feedback_db_url:
        return
    from steelcore.service_urls import postgres_url

    admin = postgres_url(settings)
    db_migrate.upgrade(admin)
    ensure_dashboard_roles(admin)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dashboard.db_access", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="action", required=True)
    roles = sub.add_parser("roles", help=f"create {DASHBOARD_ROLE} and {FEEDBACK_ROLE} (passwords from env)")
    roles.add_argument(
        "url",
        nargs="?",
        help="URL without a password of a role that owns the tables (default: STEEL_POSTGRES_URL)",
    )
    args = parser.parse_args(argv)
    settings = DashboardSettings()
    from steelcore import exit_codes
    from steelcore.service_urls import ServiceUnavailableError

    try:
        admin_url = db_migrate.cli_database_url(args.url)
    except db_migrate.CommandLinePasswordError as exc:
        print(f"{parser.prog}: {exc}", file=sys.stderr)
        return exit_codes.USAGE
    except ServiceUnavailableError as exc:
        print(f"{parser.prog}: {exc}", file=sys.stderr)
        return exit_codes.UNAVAILABLE
    # Passwords come from the environment only, so they never appear in the process list.
    ensure_dashboard_roles(
        admin_url,
        dashboard_password=_secret_from_url(settings.dashboard_db_url),
        feedback_password=_secret_from_url(settings.dashboard_feedback_db_url),
    )
    print(f"login roles {DASHBOARD_ROLE} and {FEEDBACK_ROLE} ready")
    return 0


def _secret_from_url(url: SecretStr | None) -> SecretStr | None:
    plain = reveal(url)
    password = make_url(plain).password if plain else None
    return SecretStr(str(password)) if password else None


if __name__ == "__main__":
    sys.exit(main())
