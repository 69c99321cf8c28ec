"""Bring a Postgres database to the current schema.

``upgrade(url)`` is what `steel up`, every worker at start and the tests call. It runs the Alembic
revisions in ``steelcore/postgres/migrations`` inside one transaction (Postgres DDL is
transactional) under an advisory lock, so several workers starting together migrate once and the
others wait, then find nothing to do. No alembic.ini is needed; for a DBA,
``python -m steelcore.postgres.migrate sql`` prints the DDL.

    python -m steelcore.postgres.migrate upgrade | current | sql | roles

The database is STEEL_POSTGRES_URL (or the embedded one): a URL with a password is never taken
from the command line, where every user of the machine can read it (ps, /proc/PID/cmdline).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Engine, func, select, text

from steelcore import exit_codes
from steelcore.postgres.engine import command_database_url, create_db_engine, sqlalchemy_url
from steelcore.postgres.roles import READER_ROLE, WORKER_ROLE, WRITER_ROLE, ensure_roles
from steelcore.settings import redact_url

if TYPE_CHECKING:
    from alembic.config import Config

# Alembic is imported inside the functions that migrate: readers such as `steel query` open
# engines without paying for (or logging from) Alembic's import.

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
# pg_advisory_xact_lock key held while migrating; any fixed 64-bit number unused by other code.
MIGRATION_LOCK_KEY = 0x5EE1_D8_0001


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
    """The newest revision id in steelcore/postgres/migrations."""
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


def stored_revision(engine: Engine) -> str | None:
    """The revision in the database's alembic_version (the table must exist: a worker checks a
    database it already migrated)."""
    with engine.connect() as conn:
        return conn.execute(text("SELECT version_num FROM alembic_version")).scalar()


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


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m steelcore.postgres.migrate", description=__doc__.split("\n")[0]
    )
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
    url = command_database_url(parser.prog, args.url)
    if isinstance(url, int):
        return url
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
