"""The database roles and what each may do; run as the tables' owner, after ``migrate.upgrade``.

- ``steel_reader`` / ``steel_writer``: NOLOGIN groups. The workers' login ``steel_worker`` is a
  member of the writer, which inserts the facts of a frame once and marks an alarm published; it
  can never rewrite or erase stored records, so a compromised worker can only add.
- ``steel_dashboard``: LOGIN, member of the reader; read-only sessions with a statement timeout,
  set on the role itself so every client of the login (Grafana's datasource included) gets them.
- ``steel_feedback``: LOGIN, INSERT on ``feedback`` and nothing else.

Every function is idempotent. A password given is set on its role; None leaves it as it is (fine
with local trust authentication).
"""

from __future__ import annotations

from typing import Any

from pydantic import SecretStr
from sqlalchemy import text

from steelcore.postgres.engine import (
    DASHBOARD_ROLE,
    FEEDBACK_ROLE,
    READ_STATEMENT_TIMEOUT_MS,
    create_db_engine,
)

READER_ROLE = "steel_reader"
WRITER_ROLE = "steel_writer"
# The workers' login, a member of WRITER_ROLE; `roles` sets its password from settings.
WORKER_ROLE = "steel_worker"
# What a worker writes (steelcore.postgres.defect_writes): the facts of a frame, inserted once, and
# the outbox mark of an alarm once it is on the Redis stream. Nothing else may change.
WRITER_INSERT_TABLES = (
    "lines",
    "cameras",
    "coils",
    "frames",
    "defects",
    "alarms",
    "frame_images",
    "shadow_results",
)
WRITER_UPDATE_COLUMNS = {"alarms": ("stream_entry_id", "published_at")}


def ensure_roles(url: str, *, worker_password: SecretStr | None = None) -> None:
    """Create the group roles ``steel_reader`` and ``steel_writer`` and the workers' login
    ``steel_worker`` (member of ``steel_writer``) if missing, and grant them on the schema's tables.

    - ``steel_reader``: SELECT on every table, present and future.
    - ``steel_writer``: SELECT; INSERT on WRITER_INSERT_TABLES; UPDATE of WRITER_UPDATE_COLUMNS
      only; no DELETE, no DDL. Wider grants of an older release are revoked first, and tables
      created later get SELECT only, until a release names them here.
    """
    engine = create_db_engine(url)
    try:
        # A database not yet at head (roles run before `upgrade`, or by an older release's order)
        # lacks the newer tables: grant on those present; a run after the upgrade grants the rest.
        with engine.connect() as conn:
            present = [
                t
                for t in WRITER_INSERT_TABLES
                if conn.execute(text("SELECT to_regclass(:t)"), {"t": t}).scalar()
            ]
    finally:
        engine.dispose()
    inserts = ", ".join(present)
    statements = [
        _create_role_sql(READER_ROLE),
        _create_role_sql(WRITER_ROLE),
        _create_role_sql(WORKER_ROLE, login=True),
        f"GRANT {WRITER_ROLE} TO {WORKER_ROLE}",
        f"GRANT USAGE ON SCHEMA public TO {READER_ROLE}, {WRITER_ROLE}",
        f"GRANT SELECT ON ALL TABLES IN SCHEMA public TO {READER_ROLE}",
        f"ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT ON TABLES TO {READER_ROLE}",
        # Start the writer from nothing: an older release granted INSERT, UPDATE on every table.
        f"REVOKE ALL ON ALL TABLES IN SCHEMA public FROM {WRITER_ROLE}",
        f"ALTER DEFAULT PRIVILEGES IN SCHEMA public REVOKE ALL ON TABLES FROM {WRITER_ROLE}",
        f"GRANT SELECT ON ALL TABLES IN SCHEMA public TO {WRITER_ROLE}",
        *([f"GRANT INSERT ON {inserts} TO {WRITER_ROLE}"] if present else []),
        *(
            f"GRANT UPDATE ({', '.join(columns)}) ON {table} TO {WRITER_ROLE}"
            for table, columns in WRITER_UPDATE_COLUMNS.items()
        ),
        f"GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO {WRITER_ROLE}",
        f"ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT ON TABLES TO {WRITER_ROLE}",
        f"ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT USAGE ON SEQUENCES TO {WRITER_ROLE}",
    ]
    _grant(url, statements, {WORKER_ROLE: worker_password})


def ensure_dashboard_roles(
    admin_url: str,
    *,
    dashboard_password: SecretStr | None = None,
    feedback_password: SecretStr | None = None,
) -> None:
    """Create (if missing) and grant the dashboard's two logins on the database at ``admin_url``
    (and the groups of ensure_roles, which the reader login joins)."""
    ensure_roles(admin_url)
    statements = [
        _create_role_sql(DASHBOARD_ROLE, login=True),
        _create_role_sql(FEEDBACK_ROLE, login=True),
        f"GRANT {READER_ROLE} TO {DASHBOARD_ROLE}",
        # Grafana reads as this login without open_reader's session settings: put them on the role.
        f"ALTER ROLE {DASHBOARD_ROLE} SET statement_timeout = {READ_STATEMENT_TIMEOUT_MS}",
        f"ALTER ROLE {DASHBOARD_ROLE} SET default_transaction_read_only = on",
        f"GRANT USAGE ON SCHEMA public TO {FEEDBACK_ROLE}",
        f"GRANT INSERT ON feedback TO {FEEDBACK_ROLE}",
    ]
    _grant(admin_url, statements, {DASHBOARD_ROLE: dashboard_password, FEEDBACK_ROLE: feedback_password})


def _grant(url: str, statements: list[str], passwords: dict[str, SecretStr | None]) -> None:
    """Run ``statements`` and set the passwords given (None: leave it) in one transaction."""
    engine = create_db_engine(url)
    try:
        with engine.begin() as conn:
            for statement in statements:
                # Role and table names are the module's constants, never user input.
                conn.execute(text(statement))
            for role, password in passwords.items():
                if password is not None:
                    set_role_password(conn, role, password)
    finally:
        engine.dispose()


def set_role_password(conn: Any, role: str, password: SecretStr) -> None:
    """ALTER ROLE ... PASSWORD on an open SQLAlchemy connection."""
    # ALTER ROLE takes no bind parameters; psycopg quotes the literal. Statement logging on the
    # server would still show it: a DBA with log_statement=ddl should set passwords by hand.
    from psycopg import sql

    raw = conn.connection.dbapi_connection
    statement = sql.SQL("ALTER ROLE {} PASSWORD {}").format(
        sql.Identifier(role), sql.Literal(password.get_secret_value())
    )
    with raw.cursor() as cursor:
        cursor.execute(statement)


def _create_role_sql(role: str, *, login: bool = False) -> str:
    # CREATE ROLE has no IF NOT EXISTS; the handler covers two processes racing past the check.
    kind = "LOGIN" if login else "NOLOGIN"
    return (
        "DO $$ BEGIN "
        f"IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{role}') THEN CREATE ROLE {role} {kind}; "
        "END IF; EXCEPTION WHEN duplicate_object THEN NULL; END $$"
    )
